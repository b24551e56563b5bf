//! The grain directory's contract, for both implementations: the in-memory one in virtual
//! time, the Redis one against a real `redis-server` (started by the test, see
//! `support/redis.rs`) in real time. One winner among concurrent claimants, the others learn
//! it; a claim by the owner renews; a lease lapses without renewal and the grain can be taken;
//! renewal reports grains lost; release and release-all; in Redis, a claim takes over a grain
//! whose owner is no longer a member.

use std::sync::Arc;
use std::time::Duration;

use grainwire::directory::{Claim, GrainDirectory, MemoryDirectory, Owner, RedisDirectory};
use grainwire::{GrainId, GrainType, ServerId};

mod support;
use support::redis::RedisServer;

fn owner(i: usize) -> Owner {
    Owner {
        server: ServerId::new(format!("s{i}")),
        endpoint: format!("10.0.0.{}:7000", i + 1).parse().unwrap(),
    }
}

fn grain(k: i64) -> GrainId {
    GrainId::new(GrainType::of("Room"), k)
}

/// The contract; `pass` lets `d` of time go by (virtual or real).
async fn contract<F, Fut>(dir: Arc<dyn GrainDirectory>, lease: Duration, pass: F)
where
    F: Fn(Duration) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Ten servers claim one grain at once: one wins, the others learn who.
    let g = grain(1);
    let claims: Vec<_> = (0..10)
        .map(|i| {
            let (dir, g, me) = (dir.clone(), g.clone(), owner(i));
            tokio::spawn(async move { (i, dir.claim(&g, &me, lease).await.unwrap()) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut told = Vec::new();
    for c in claims {
        match c.await.unwrap() {
            (i, Claim::Won) => winners.push(i),
            (_, Claim::Owned(o)) => told.push(o),
        }
    }
    assert_eq!(winners.len(), 1, "one winner: {winners:?}");
    let w = owner(winners[0]);
    assert!(told.iter().all(|o| *o == w), "the others learn the winner");
    assert_eq!(dir.lookup(&g).await.unwrap(), Some(w.clone()));
    // The owner claiming again renews; a renewal keeps it past the first lease.
    assert_eq!(dir.claim(&g, &w, lease).await.unwrap(), Claim::Won);
    pass(lease / 2).await;
    assert!(dir.renew(std::slice::from_ref(&g), &w.server, lease).await.unwrap().is_empty());
    pass(lease * 3 / 4).await;
    assert_eq!(dir.lookup(&g).await.unwrap(), Some(w.clone()), "renewed in time");
    // Without renewal it lapses: someone else takes it, and the old owner learns it lost it.
    pass(lease * 2).await;
    assert_eq!(dir.lookup(&g).await.unwrap(), None, "lapsed");
    let other = owner((winners[0] + 1) % 10);
    assert_eq!(dir.claim(&g, &other, lease).await.unwrap(), Claim::Won);
    assert_eq!(
        dir.renew(&[g.clone(), grain(99)], &w.server, lease).await.unwrap(),
        [g.clone(), grain(99)]
    );
    // Release: only the owner's counts.
    dir.release(&g, &w.server).await.unwrap();
    assert_eq!(dir.lookup(&g).await.unwrap(), Some(other.clone()), "not ours to release");
    dir.release(&g, &other.server).await.unwrap();
    assert_eq!(dir.lookup(&g).await.unwrap(), None);
    // Release-all: every grain of a dead server, none of the others'.
    for k in 10..20 {
        assert_eq!(dir.claim(&grain(k), &owner(0), lease).await.unwrap(), Claim::Won);
    }
    assert_eq!(dir.claim(&grain(30), &owner(1), lease).await.unwrap(), Claim::Won);
    assert_eq!(dir.release_all(&owner(0).server).await.unwrap(), 10);
    for k in 10..20 {
        assert_eq!(dir.lookup(&grain(k)).await.unwrap(), None);
    }
    assert_eq!(dir.lookup(&grain(30)).await.unwrap(), Some(owner(1)));
    // Keys of every kind are grains of their own.
    let texts =
        [GrainId::new(GrainType::of("Room"), "1"), GrainId::new(GrainType::of("Room"), 1u128)];
    for t in &texts {
        assert_eq!(dir.claim(t, &owner(2), lease).await.unwrap(), Claim::Won);
    }
    assert_eq!(dir.lookup(&grain(1)).await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn the_memory_directory_keeps_the_contract() {
    let dir: Arc<dyn GrainDirectory> = Arc::new(MemoryDirectory::new());
    contract(dir, Duration::from_secs(10), tokio::time::sleep).await;
}

#[tokio::test]
async fn the_redis_directory_keeps_the_contract() {
    let Some(redis) = RedisServer::start("redis directory") else { return };
    let dir = RedisDirectory::new(&redis.url(), "d1", "game", Duration::from_secs(2)).unwrap();
    contract(Arc::new(dir), Duration::from_millis(400), tokio::time::sleep).await;
}

#[tokio::test]
async fn in_redis_a_grain_whose_owner_left_the_membership_can_be_claimed_at_once() {
    let Some(redis) = RedisServer::start("redis directory membership") else { return };
    let dir = RedisDirectory::new(&redis.url(), "d2", "game", Duration::from_secs(2)).unwrap();
    let lease = Duration::from_secs(60);
    let r = redis::Client::open(redis.url()).unwrap();
    let mut con = r.get_multiplexed_async_connection().await.unwrap();
    // s1 is a member; s0 is not (it left, or its membership entry lapsed).
    let _: () = redis::pipe()
        .cmd("SET")
        .arg("grainwire:{d2}:game:member:s1")
        .arg("{}")
        .cmd("SADD")
        .arg("grainwire:{d2}:game:members")
        .arg("s1")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(dir.claim(&grain(1), &owner(0), lease).await.unwrap(), Claim::Won);
    assert_eq!(dir.claim(&grain(2), &owner(1), lease).await.unwrap(), Claim::Won);
    // A live member's grain stays its own; a departed one's is taken over, lease or not.
    assert_eq!(dir.claim(&grain(2), &owner(3), lease).await.unwrap(), Claim::Owned(owner(1)));
    assert_eq!(dir.claim(&grain(1), &owner(1), lease).await.unwrap(), Claim::Won);
    assert_eq!(dir.lookup(&grain(1)).await.unwrap(), Some(owner(1)));
    // Redis gone: a typed error, not a hang.
    drop(redis);
    let err = dir.lookup(&grain(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            grainwire::directory::DirectoryError::Unavailable(_)
                | grainwire::directory::DirectoryError::Timeout
        ),
        "{err:?}"
    );
}
