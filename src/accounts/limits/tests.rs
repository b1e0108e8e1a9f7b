//! The attempt limiter's tests.

use super::*;

fn too_many(r: Result<Reservation<'_>, AccountsError>) -> u64 {
    match r {
        Err(AccountsError::TooManyRequests(s)) => s,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("allowed"),
    }
}

#[test]
fn the_eleventh_failure_in_a_window_is_refused_per_key() {
    let l = Limiter::new(100);
    let ip: IpAddr = "192.0.2.1".parse().unwrap();
    let keys = [
        l.key(Rule::FailAccountAddress, ("a@x", client_unit(ip))),
        l.address(Rule::FailAddress, ip),
    ];
    for _ in 0..10 {
        l.reserve_at(&keys, 1_000).unwrap();
    }
    let s = too_many(l.reserve_at(&keys, 1_000));
    assert!((1..=120).contains(&s), "{s}");
    // The address is used up for every account; another address is not.
    assert!(
        l.reserve_at(&[l.address(Rule::FailAddress, ip)], 2_000)
            .is_err()
    );
    let other: IpAddr = "192.0.2.2".parse().unwrap();
    l.reserve_at(&[l.address(Rule::FailAddress, other)], 2_000)
        .unwrap();
    // Nothing was counted by the refused call: a refused key set counts on none.
    let a = [l.key(Rule::FailAccount, "a@x")];
    for _ in 0..100 {
        l.reserve_at(&a, 3_000).unwrap();
    }
    assert!(l.reserve_at(&a, 3_000).is_err());
}

#[test]
fn given_back_counts_are_free_again_and_cleared_keys_start_over() {
    let l = Limiter::new(100);
    let k = [l.key(Rule::FailCode, "uid")];
    for _ in 0..10 {
        l.reserve_at(&k, 10).unwrap().give_back_all();
    }
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(l.reserve_at(&k, 10).unwrap());
    }
    assert!(l.reserve_at(&k, 10).is_err());
    held.pop().unwrap().clear(&[Rule::FailCode]);
    l.reserve_at(&k, 10).unwrap();
}

#[test]
fn windows_slide_and_expire_without_a_sweep() {
    let l = Limiter::new(100);
    let k = [l.key(Rule::FailAddress, "x")];
    for _ in 0..10 {
        l.reserve_at(&k, 59_000).unwrap();
    }
    // Just after the window: the previous one still weighs almost fully.
    assert!(l.reserve_at(&k, 60_500).is_err());
    // Late in the next window it has faded enough for one more.
    l.reserve_at(&k, 115_000).unwrap();
    // Two windows later nothing is left.
    for _ in 0..10 {
        l.reserve_at(&k, 240_000).unwrap();
    }
    assert_eq!(l.keys_held(), 1);
}

#[test]
fn two_hundred_thousand_keys_stay_bounded_and_a_full_table_admits_new_keys_uncounted() {
    let l = Limiter::new(MAX_KEYS);
    let early = l.address(Rule::FailAddress, "198.51.100.7".parse().unwrap());
    for _ in 0..10 {
        l.reserve_at(&[early], 1_000).unwrap();
    }
    let started = Instant::now();
    let mut refused = 0;
    for i in 0..200_000u32 {
        let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000u32 + i));
        if l.reserve_at(&[l.address(Rule::FailAddress, ip)], 2_000)
            .is_err()
        {
            refused += 1;
        }
    }
    assert!(l.keys_held() <= MAX_KEYS, "{}", l.keys_held());
    // A full table locks nobody out: new keys are admitted, uncounted.
    assert_eq!(refused, 0);
    let late = l.address(Rule::FailAddress, "203.0.113.9".parse().unwrap());
    for _ in 0..20 {
        l.reserve_at(&[late], 2_500).unwrap().give_back_all();
    }
    // The early key's counter was not forgotten to make room: still refused.
    assert!(l.reserve_at(&[early], 3_000).is_err());
    // Another rule's table is unaffected and still counts.
    let a = l.key(Rule::FailCode, "uid");
    for _ in 0..10 {
        l.reserve_at(&[a], 3_000).unwrap();
    }
    assert!(l.reserve_at(&[a], 3_000).is_err());
    // 200,000 operations on a table at its cap: an O(n) sweep each would take
    // minutes; O(1) ones take well under a second even in a debug build.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // A new window counts new keys again.
    let fresh = l.address(Rule::FailAddress, "203.0.113.1".parse().unwrap());
    for _ in 0..10 {
        l.reserve_at(&[fresh], 150_000).unwrap();
    }
    assert!(l.reserve_at(&[fresh], 150_000).is_err());
}

fn under_ceiling<'a>(
    l: &'a Limiter,
    account: &str,
    ip: &str,
    now: u64,
) -> Result<Reservation<'a>, AccountsError> {
    let here = l.key(Rule::FailAccountAddressHour, (account, ip));
    l.reserve_inner(
        &[here],
        Some((l.key(Rule::FailAccount, account), here)),
        now,
    )
}

#[test]
fn over_the_account_ceiling_only_addresses_that_failed_are_refused() {
    let l = Limiter::new(1_000);
    // 100 failures from 10 addresses: the ceiling is reached.
    for i in 0..100 {
        under_ceiling(&l, "a", &format!("10.0.0.{}", i % 10), 1_000).unwrap();
    }
    // An address that failed for this account (10 times) is refused …
    assert!(under_ceiling(&l, "a", "10.0.0.3", 2_000).is_err());
    // … a fresh one gets TYPOS_OVER_CEILING attempts this window …
    let tries: Vec<_> = (0..TYPOS_OVER_CEILING)
        .map(|_| under_ceiling(&l, "a", "192.0.2.1", 2_000).unwrap())
        .collect();
    assert!(under_ceiling(&l, "a", "192.0.2.1", 2_000).is_err());
    drop(tries);
    // … and other accounts are not concerned.
    under_ceiling(&l, "b", "10.0.0.3", 2_000).unwrap();
    // Under the ceiling, the ceiling counts: a given-back attempt frees its place.
    let l = Limiter::new(1_000);
    for i in 0..99 {
        under_ceiling(&l, "a", &format!("10.0.1.{i}"), 0).unwrap();
    }
    under_ceiling(&l, "a", "10.0.2.1", 0)
        .unwrap()
        .give_back_all();
    under_ceiling(&l, "a", "10.0.2.2", 0).unwrap();
    // Now full: 10.0.2.1 gave its count back, so it is fresh again.
    for _ in 0..TYPOS_OVER_CEILING {
        under_ceiling(&l, "a", "10.0.2.1", 0).unwrap();
    }
    assert!(under_ceiling(&l, "a", "10.0.2.1", 0).is_err());
}

#[test]
fn an_ipv6_client_is_counted_by_its_slash_64() {
    let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
    let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
    let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
    assert_eq!(client_unit(a), client_unit(b));
    assert_ne!(client_unit(a), client_unit(c));
    let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
    assert_eq!(client_unit(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    let l = Limiter::new(100);
    for _ in 0..10 {
        l.reserve_at(&[l.address(Rule::FailAddress, a)], 0).unwrap();
    }
    assert!(l.reserve_at(&[l.address(Rule::FailAddress, b)], 0).is_err());
    l.reserve_at(&[l.address(Rule::FailAddress, c)], 0).unwrap();
}

#[test]
fn a_check_counts_nothing_and_refuses_exactly_when_a_reservation_would() {
    let l = Limiter::new(100);
    let ip: IpAddr = "192.0.2.7".parse().unwrap();
    let keys = [
        l.key(Rule::LoginAccount, "uid"),
        l.address(Rule::LoginAddress, ip),
    ];
    for _ in 0..30 {
        // Checking any number of times leaves the count where it was.
        l.check(&keys).unwrap();
        l.check(&keys).unwrap();
        l.reserve(&keys).unwrap();
    }
    let Err(AccountsError::TooManyRequests(s)) = l.check(&keys) else {
        panic!("the 31st sign-in of the minute passed the check");
    };
    assert!((1..=120).contains(&s), "{s}");
    assert!(l.reserve(&keys).is_err());
    // Another address, same account: the account's own limit refuses it too.
    let other = [
        l.key(Rule::LoginAccount, "uid"),
        l.address(Rule::LoginAddress, "192.0.2.8".parse().unwrap()),
    ];
    assert!(l.check(&other).is_err());
    assert!(l.check(&[l.key(Rule::LoginAccount, "another uid")]).is_ok());
}
