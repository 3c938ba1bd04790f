//! The loop with real threads: a client and a backend on their own threads, the switch asleep
//! between bursts and woken by the client's kicks.

use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::peer::{host_peer, PeerConfig};
use crate::switch::{MonotonicClock, Polling, ServiceConfig, Switch, SwitchConfig};
use crate::wire::{MsgHeader, MsgKind, Status};

#[test]
fn sleeping_loop_wakes_on_guest_kicks_and_loses_nothing() {
    let cfg = PeerConfig {
        queue_size: 32,
        slot_size: 128,
        event_idx: true,
    };
    // Sweeps (and so timer wake-ups) far apart: progress after a sleep needs the kick.
    let sw_cfg = SwitchConfig {
        sweep_interval_ns: 3_600_000_000_000,
        ..Default::default()
    };
    let mut sw = Switch::new(sw_cfg, Arc::new(MonotonicClock::new())).unwrap();
    let (mut client, cdev) = host_peer(cfg).unwrap();
    let (mut backend, bdev) = host_peer(cfg).unwrap();
    sw.add_port("client", cdev, Box::new(Polling)).unwrap();
    let b = sw.add_port("backend", bdev, Box::new(Polling)).unwrap();
    let svc = sw
        .add_service("echo", ServiceConfig::default(), &[(b, 1.0)])
        .unwrap();
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let client_kick = kick.try_clone().unwrap();
    let backend_kick = kick.try_clone().unwrap();
    let mut lp = SwitchLoop::new(
        sw,
        vec![kick],
        LoopConfig {
            spin_polls: 10,
            max_sleep: Duration::from_secs(3600),
        },
    )
    .unwrap();
    let stopper = lp.stopper();
    const BURSTS: u64 = 5;
    const PER_BURST: u64 = 20;

    let backend_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 96];
        let mut served = 0;
        while served < BURSTS * PER_BURST {
            let mut any = false;
            while let Some(m) = backend.rx.recv(&mut buf).unwrap() {
                if m.header.kind() == Some(MsgKind::Request) {
                    backend.tx.reclaim().unwrap();
                    let rep = MsgHeader::reply_to(&m.header, Status::Ok, m.len as u32);
                    backend.tx.send(&rep, &buf[..m.len]).unwrap();
                    served += 1;
                    any = true;
                }
            }
            if backend.rx.flush().unwrap() | backend.tx.flush().unwrap() {
                backend_kick.write(1).unwrap();
            }
            if !any {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    });
    let client_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 96];
        let mut replies = 0;
        for burst in 0..BURSTS {
            // Give the switch time to fall asleep between bursts.
            std::thread::sleep(Duration::from_millis(30));
            for i in 0..PER_BURST {
                client.tx.reclaim().unwrap();
                let id = burst * PER_BURST + i;
                let h = MsgHeader::request_to_service(svc, id, 8);
                client.tx.send(&h, &id.to_le_bytes()).unwrap();
            }
            if client.tx.flush().unwrap() {
                client_kick.write(1).unwrap();
            }
            while replies < (burst + 1) * PER_BURST {
                while let Some(m) = client.rx.recv(&mut buf).unwrap() {
                    if m.header.kind() == Some(MsgKind::Reply) {
                        assert_eq!(&buf[..8], &m.header.msg_id().to_le_bytes());
                        replies += 1;
                    }
                }
                if client.rx.flush().unwrap() {
                    client_kick.write(1).unwrap();
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        replies
    });
    let run = std::thread::spawn(move || {
        lp.run(
            |sw| sw.snapshot().totals.replies_delivered == BURSTS * PER_BURST,
            Duration::from_secs(3600),
            |_, _, _| {},
        );
        lp
    });
    assert_eq!(client_thread.join().unwrap(), BURSTS * PER_BURST);
    backend_thread.join().unwrap();
    stopper.stop();
    let lp = run.join().unwrap();
    let st = lp.stats();
    assert_eq!(
        lp.switch.snapshot().totals.replies_delivered,
        BURSTS * PER_BURST
    );
    assert!(st.sleeps > 0, "{st:?}");
    assert!(
        st.doorbells > 0,
        "the sleeping switch was woken by kicks: {st:?}"
    );
}

#[test]
fn a_port_that_comes_back_again_and_again_keeps_one_doorbell() {
    let sw = Switch::<vm_memory::GuestMemoryMmap>::new(
        SwitchConfig::default(),
        Arc::new(MonotonicClock::new()),
    )
    .unwrap();
    let kicks = (0..3)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let mut lp = SwitchLoop::new(sw, kicks, LoopConfig::default()).unwrap();
    assert_eq!(lp.watched(), 3);
    // Each revival of a port hands the loop a new kick eventfd. Were the old ones kept open,
    // this would run out of descriptors (a process gets 1024 by default) long before the end.
    for i in 0..30_000u32 {
        lp.watch(i % 2, EventFd::new(libc::EFD_NONBLOCK).unwrap());
    }
    assert_eq!(lp.watched(), 3);
    lp.watch(7, EventFd::new(libc::EFD_NONBLOCK).unwrap());
    assert_eq!(lp.watched(), 4);
}
