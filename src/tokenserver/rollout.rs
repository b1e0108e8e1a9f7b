//! Which node a new user goes to: allow-lists first, then nodes being rolled out to a
//! percentage of users (chosen by a stable hash of the FxA uid), then the general pool —
//! each time the node with the most free capacity. Deny-lists exclude a node.

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

/// Whether a node has room for one more new user.
fn has_room(n: &Node) -> bool {
    n.current_load < n.capacity && n.available > 0
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
        .filter(|n| n.serving() && listed(n.id, ListKind::Allow))
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
}
