//! Request keys are unique across hosts: hosts configured with the same
//! seed must not complete each other's proposals. (A proposal is completed
//! by its key when its entry is applied; a peer's entry carrying the same
//! key would complete an unrelated local proposal with the peer's result.)

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use longship::storage::MemFs;
use longship::{
    Config, NodeHost, NodeHostConfig, ReplicaId, ShardId, SmEntry, SmError, Start, StateMachine,
    StopFlag,
};
use longship_transport::MemNetwork;

/// Answers each entry with a digest of its own command.
#[derive(Default)]
struct Echo;

fn digest(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl StateMachine for Echo {
    fn update(&mut self, entries: &mut [SmEntry]) -> Result<(), SmError> {
        for e in entries {
            e.result.value = digest(&e.cmd);
        }
        Ok(())
    }
    fn lookup(&self, _: &[u8]) -> Result<Vec<u8>, SmError> {
        Ok(Vec::new())
    }
    fn save_snapshot(&self, _: &mut dyn Write, _: &StopFlag) -> Result<(), SmError> {
        Ok(())
    }
    fn recover_from_snapshot(&mut self, _: &mut dyn Read, _: &StopFlag) -> Result<(), SmError> {
        Ok(())
    }
}

fn addr(i: u64) -> String {
    format!("same-seed-{i}:1")
}

#[test]
fn hosts_with_the_same_seed_do_not_complete_each_others_proposals() {
    let net = MemNetwork::new();
    let members: BTreeMap<ReplicaId, String> = (1..=3).map(|i| (ReplicaId(i), addr(i))).collect();
    let hosts: Vec<Arc<NodeHost>> = (1..=3)
        .map(|i| {
            let nh = NodeHost::builder(NodeHostConfig {
                node_host_dir: format!("/same-seed-nh{i}").into(),
                rtt_ms: 5,
                raft_address: addr(i),
                // The same seed everywhere (and the same incarnation: each
                // host's directory is new).
                seed: Some(42),
                ..NodeHostConfig::default()
            })
            .transport(Arc::new(net.transport(&addr(i))))
            .file_system(Arc::new(MemFs::new()))
            .mem_log_db()
            .build()
            .unwrap();
            nh.start_replica(
                Start::New(members.clone()),
                |_, _| Box::new(Echo),
                Config {
                    election_rtt: 10,
                    heartbeat_rtt: 1,
                    ..Config::new(ShardId(1), ReplicaId(i))
                },
            )
            .unwrap();
            Arc::new(nh)
        })
        .collect();
    // Every host proposes the same number of commands in lockstep, so
    // equal generators would draw equal keys.
    let threads: Vec<_> = hosts
        .iter()
        .enumerate()
        .map(|(h, nh)| {
            let nh = nh.clone();
            std::thread::spawn(move || {
                let mut s = nh.get_noop_session(ShardId(1));
                for n in 0..100 {
                    let cmd = format!("host {h} command {n}").into_bytes();
                    let want = digest(&cmd);
                    let deadline = std::time::Instant::now() + Duration::from_secs(20);
                    loop {
                        match nh.sync_propose(&mut s, cmd.clone(), Duration::from_secs(3)) {
                            Ok(r) => {
                                assert_eq!(
                                    r.value, want,
                                    "host {h}: proposal {n} completed with another entry's result"
                                );
                                break;
                            }
                            Err(e) if e.is_temporary() && std::time::Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_millis(5))
                            }
                            Err(e) => panic!("host {h}: proposal {n} failed: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    for h in hosts {
        h.close();
    }
}
