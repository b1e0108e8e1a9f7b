//! Which node a new user goes to: allow-lists first, then nodes being rolled out to a
//! percentage of users (chosen by a stable hash of the FxA uid), then the general pool —
//! each time the node with the most free capacity. Deny-lists exclude a node; a node
//! the canary guard paused takes no new users at all.

use sha2::{Digest, Sha256};

use super::store::{ListKind, Node};

/// Basis points in 100%.
pub const ALL: i64 = 10_000;

/// The user's stable bucket in 0..10000. A node rolled out to `p` basis points takes
/// the users with bucket < p, so raising 5% to 20% keeps the first 5%.
pub fn bucket(fxa_uid: &str) -> i64 {
    let digest = Sha256::digest(fxa_uid.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % ALL as u64) as i64
}

/// Whether a node has room for one more new user (and is not paused by the guard).
fn has_room(n: &Node) -> bool {
    n.current_load < n.capacity && n.available > 0 && n.paused_at.is_none()
}

/// Whether a node is in rollout, as the canary guard judges: serving (not down, not
/// draining) and either rolled out to a share below 100% or named by an allow-list.
pub fn in_rollout(n: &Node, allow_listed: bool) -> bool {
    n.serving() && (n.percent_bp < ALL || allow_listed)
}

/// Each node's share of the next new users (0.0–1.0, in the order of `nodes`), from
/// the rules alone (allow- and deny-lists name single users and are left out): for
/// each bucket, the rolling-out nodes covering it, else the general nodes, and of
/// those the one(s) with the most free capacity (ties share). So a general node's
/// share moves to another as it fills; a paused, full, down or draining node has 0.
pub fn shares(nodes: &[Node]) -> Vec<f64> {
    let eligible: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.serving() && has_room(n))
        .collect();
    let mut bounds: Vec<i64> = eligible
        .iter()
        .map(|n| n.percent_bp.clamp(0, ALL))
        .chain([0, ALL])
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut out = vec![0.0; nodes.len()];
    for pair in bounds.windows(2) {
        let (lo, hi) = (pair[0], pair[1]);
        // Every bucket b in lo..hi is below a rolling node's percent iff hi <= percent.
        let rolling: Vec<&&Node> = eligible
            .iter()
            .filter(|n| n.percent_bp < ALL && hi <= n.percent_bp)
            .collect();
        let tier: Vec<&&Node> = if rolling.is_empty() {
            eligible.iter().filter(|n| n.percent_bp >= ALL).collect()
        } else {
            rolling
        };
        let Some(best) = tier.iter().map(|n| n.capacity - n.current_load).max() else {
            continue;
        };
        let winners: Vec<i64> = tier
            .iter()
            .filter(|n| n.capacity - n.current_load == best)
            .map(|n| n.id)
            .collect();
        let each = (hi - lo) as f64 / ALL as f64 / winners.len() as f64;
        for (i, n) in nodes.iter().enumerate() {
            if winners.contains(&n.id) {
                out[i] += each;
            }
        }
    }
    out
}

/// One place a new user may go, in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The node's row id.
    pub node_id: i64,
    /// Allow-listed: placed even past capacity.
    pub forced: bool,
}

/// The nodes a new user may be assigned to, best first.
pub fn choices(nodes: &[Node], lists: &[(i64, ListKind)], fxa_uid: &str) -> Vec<Choice> {
    let listed = |id: i64, kind: ListKind| lists.iter().any(|(n, k)| *n == id && *k == kind);
    let b = bucket(fxa_uid);
    let mut out: Vec<Choice> = nodes
        .iter()
        .filter(|n| n.takes_new_users() && listed(n.id, ListKind::Allow))
        .map(|n| Choice {
            node_id: n.id,
            forced: true,
        })
        .collect();
    let eligible = |n: &&Node| n.serving() && has_room(n) && !listed(n.id, ListKind::Deny);
    fn by_free_capacity(mut v: Vec<&Node>) -> impl Iterator<Item = Choice> + '_ {
        v.sort_by_key(|n| (std::cmp::Reverse(n.capacity - n.current_load), n.id));
        v.into_iter().map(|n| Choice {
            node_id: n.id,
            forced: false,
        })
    }
    let rolling: Vec<&Node> = nodes
        .iter()
        .filter(eligible)
        .filter(|n| n.percent_bp < ALL && b < n.percent_bp)
        .collect();
    let general: Vec<&Node> = nodes
        .iter()
        .filter(eligible)
        .filter(|n| n.percent_bp >= ALL)
        .collect();
    out.extend(by_free_capacity(rolling));
    out.extend(by_free_capacity(general));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: i64, percent_bp: i64, capacity: i64, load: i64) -> Node {
        Node {
            id,
            node: format!("http://n{id}"),
            capacity,
            available: capacity - load,
            current_load: load,
            downed: false,
            draining: false,
            backoff: 0,
            percent_bp,
            paused_at: None,
            pause_reason: None,
            suspect_since: None,
            suspect_reason: None,
        }
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket("abc"), bucket("abc"));
        let under_10 = (0..10_000)
            .filter(|i| bucket(&format!("user{i}")) < 1000)
            .count();
        assert!((850..=1150).contains(&under_10), "{under_10}");
    }

    #[test]
    fn rollout_nodes_take_their_share_first() {
        let nodes = [node(1, ALL, 100, 10), node(2, 1000, 100, 0)];
        let inside = (0..)
            .map(|i| format!("u{i}"))
            .find(|u| bucket(u) < 1000)
            .unwrap();
        let outside = (0..)
            .map(|i| format!("u{i}"))
            .find(|u| bucket(u) >= 1000)
            .unwrap();
        assert_eq!(choices(&nodes, &[], &inside)[0].node_id, 2);
        assert_eq!(
            choices(&nodes, &[], &outside)
                .iter()
                .map(|c| c.node_id)
                .collect::<Vec<_>>(),
            [1]
        );
    }

    #[test]
    fn lists_capacity_and_state_are_respected() {
        let mut nodes = vec![node(1, ALL, 10, 10), node(2, ALL, 10, 2), node(3, 0, 10, 0)];
        assert_eq!(choices(&nodes, &[], "x")[0].node_id, 2, "node 1 is full");
        let allow = [(3, ListKind::Allow)];
        assert_eq!(
            choices(&nodes, &allow, "x")[0],
            Choice {
                node_id: 3,
                forced: true
            }
        );
        assert!(choices(&nodes, &[(2, ListKind::Deny)], "x").is_empty());
        nodes[1].draining = true;
        assert!(choices(&nodes, &[], "x").is_empty());
    }

    #[test]
    fn a_paused_node_takes_no_new_users_not_even_allow_listed_ones() {
        let mut nodes = vec![node(1, ALL, 10, 0), node(2, 5000, 10, 0)];
        nodes[1].paused_at = Some(1);
        let allow = [(2, ListKind::Allow)];
        for u in ["a", "b", "c", "d", "e", "f"] {
            let c = choices(&nodes, &allow, u);
            assert!(c.iter().all(|c| c.node_id == 1), "{u}: {c:?}");
        }
        assert!(in_rollout(&nodes[1], false));
        assert!(!in_rollout(&nodes[0], false));
        assert!(in_rollout(&nodes[0], true));
        nodes[0].downed = true;
        assert!(!in_rollout(&nodes[0], true));
    }

    #[test]
    fn shares_follow_the_rules() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        // Two equal general nodes split the pool; a 20% node takes its 20% first.
        let nodes = [
            node(1, ALL, 100, 10),
            node(2, ALL, 100, 10),
            node(3, 2000, 100, 50),
        ];
        let s = shares(&nodes);
        assert!(
            close(s[0], 0.4) && close(s[1], 0.4) && close(s[2], 0.2),
            "{s:?}"
        );
        // Two rolling nodes: the emptier takes the buckets both cover.
        let nodes = [
            node(1, ALL, 100, 10),
            node(2, 1000, 100, 5),
            node(3, 3000, 100, 0),
        ];
        let s = shares(&nodes);
        assert!(
            close(s[0], 0.7) && close(s[1], 0.0) && close(s[2], 0.3),
            "{s:?}"
        );
        // A paused or full node has none; its buckets go to the general pool.
        let mut nodes = vec![node(1, ALL, 100, 10), node(2, 3000, 100, 0)];
        nodes[1].paused_at = Some(5);
        let s = shares(&nodes);
        assert!(close(s[0], 1.0) && close(s[1], 0.0), "{s:?}");
        let nodes = [node(1, 5000, 10, 10)];
        assert_eq!(shares(&nodes), [0.0]);
        // The share matches where choices() sends users.
        let nodes = [
            node(1, ALL, 100, 10),
            node(2, 2500, 100, 0),
            node(3, ALL, 100, 40),
        ];
        let s = shares(&nodes);
        let mut landed = [0usize; 3];
        for i in 0..4000 {
            let c = choices(&nodes, &[], &format!("user{i}"));
            landed[(c[0].node_id - 1) as usize] += 1;
        }
        for k in 0..3 {
            let seen = landed[k] as f64 / 4000.0;
            assert!(
                (seen - s[k]).abs() < 0.03,
                "node {}: {seen} vs {}",
                k + 1,
                s[k]
            );
        }
    }
}
