//! A whole deployment on one machine: a real PostgreSQL (started by `scripts/test`), two
//! tokenserver processes sharing it, three storage-node processes with their own data
//! dirs; 1,000 users sign in through either tokenserver, land on nodes by the rollout
//! rules within capacity, and sync. One tokenserver is killed half-way: nothing is lost.

use std::collections::HashMap;
use std::sync::Arc;

use crate::common::{Client, Server, cli, fake_verifier, fresh_database, sign_in};
use serde_json::json;

const USERS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_users_sign_in_through_two_tokenservers_onto_three_nodes() {
    let db = fresh_database().await;
    let verify = fake_verifier().await;
    let env = [
        ("SYNCSTORE_TOKENSERVER_DATABASE_URL", db.as_str()),
        ("SYNCSTORE_FXA_VERIFY_URL", verify.as_str()),
    ];
    let start = |role: &'static str| {
        let mut e = env.to_vec();
        e.push(("SYNCSTORE_ROLE", role));
        Server::start(&e)
    };
    let nodes: Vec<Arc<Server>> = (0..3).map(|_| Arc::new(start("storage"))).collect();
    // Two general nodes, and a third rolled out to 20% of new users, each with a cap.
    let caps = [450usize, 450, 300];
    for (node, cap) in nodes.iter().zip(caps) {
        cli(
            &db,
            &["node", "add", &node.url(), "--capacity", &cap.to_string()],
        );
    }
    cli(&db, &["rollout", "set", &nodes[2].url(), "20"]);
    let mut tokenservers: Vec<Option<Arc<Server>>> = (0..2)
        .map(|_| Some(Arc::new(start("tokenserver"))))
        .collect();

    let mut placed: HashMap<String, (u64, String)> = HashMap::new();
    for round in 0..2 {
        if round == 1 {
            // Half-way: one tokenserver dies; the other carries on alone.
            drop(tokenservers[0].take());
        }
        let live: Vec<Arc<Server>> = tokenservers.iter().flatten().cloned().collect();
        let range = (round * USERS / 2)..((round + 1) * USERS / 2);
        for chunk in range.collect::<Vec<_>>().chunks(32) {
            let mut tasks = Vec::new();
            for &i in chunk {
                let ts = live[i % live.len()].clone();
                let nodes = nodes.clone();
                tasks.push(tokio::spawn(async move {
                    let user = format!("cluster-user{i}");
                    let t = sign_in(&ts, &user).await;
                    let endpoint = t["api_endpoint"].as_str().unwrap();
                    let node = nodes
                        .iter()
                        .find(|n| endpoint.starts_with(&n.url()))
                        .expect("a known node");
                    let c = Client::with_token(
                        node,
                        t["uid"].as_u64().unwrap(),
                        t["id"].as_str().unwrap().into(),
                        t["key"].as_str().unwrap().into(),
                    );
                    let r = c
                        .put("/storage/clients/me", &json!({"payload": user}))
                        .await;
                    assert_eq!(r.status, 200);
                    assert_eq!(c.get("/info/collections").await.json()["clients"], r.json());
                    (user, (c.uid, node.url()))
                }));
            }
            for t in tasks {
                let (user, at) = t.await.unwrap();
                placed.insert(user, at);
            }
        }
    }
    assert_eq!(placed.len(), USERS);

    // Capacity was respected, and the rolled-out node got about its share.
    let mut per_node: HashMap<String, usize> = HashMap::new();
    for (_, node) in placed.values() {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    for (node, cap) in nodes.iter().zip(caps) {
        let n = per_node.get(&node.url()).copied().unwrap_or(0);
        assert!(n <= cap, "{} holds {n} > {cap}", node.url());
    }
    let rolled = per_node.get(&nodes[2].url()).copied().unwrap_or(0);
    assert!(
        (140..=260).contains(&rolled),
        "20% node got {rolled} of {USERS}"
    );

    // Nothing was lost: every user, asking the surviving tokenserver again, gets the
    // same uid and node, and finds its record there.
    let survivor = tokenservers[1].clone().unwrap();
    let placed = Arc::new(placed);
    let users: Vec<String> = placed.keys().cloned().collect();
    // No more sign-ins together than the 32 verifications a tokenserver lets out.
    for chunk in users.chunks(32) {
        let mut tasks = Vec::new();
        for user in chunk {
            let (ts, nodes, placed, user) = (
                survivor.clone(),
                nodes.clone(),
                placed.clone(),
                user.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let t = sign_in(&ts, &user).await;
                let (uid, node) = &placed[&user];
                assert_eq!(t["uid"].as_u64(), Some(*uid), "{user}");
                assert!(
                    t["api_endpoint"]
                        .as_str()
                        .unwrap()
                        .starts_with(node.as_str())
                );
                let server = nodes.iter().find(|n| &n.url() == node).unwrap();
                let c = Client::with_token(
                    server,
                    *uid,
                    t["id"].as_str().unwrap().into(),
                    t["key"].as_str().unwrap().into(),
                );
                let r = c.get("/storage/clients/me").await;
                assert_eq!(r.json()["payload"], json!(user));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    // The database agrees with what clients saw.
    let list = cli(&db, &["node", "list"]);
    for (node, _) in nodes.iter().zip(caps) {
        let n = per_node.get(&node.url()).copied().unwrap_or(0);
        let line = list.lines().find(|l| l.starts_with(&node.url())).unwrap();
        let cols: Vec<&str> = line.split_whitespace().collect();
        // NODE CAPACITY LOAD USERS …
        assert_eq!(cols[2], n.to_string(), "{line}");
        assert_eq!(cols[3], n.to_string(), "{line}");
    }
}
