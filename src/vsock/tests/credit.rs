use super::super::credit::*;

#[test]
fn peer_free_follows_the_formula_across_wrap() {
    let mut c = Credit::new(1000);
    assert_eq!(c.peer_free(), 0, "no credit before the peer's first header");
    assert_eq!(c.on_peer_credit(4096, 0), Ok(true));
    assert_eq!(c.peer_free(), 4096);
    c.on_sent(4000);
    assert_eq!(c.peer_free(), 96);
    c.on_peer_credit(4096, 4000).unwrap();
    assert_eq!(c.peer_free(), 4096);

    // Counters near the wrap: tx_cnt passes 2^32 and the arithmetic still holds.
    let mut c = Credit::new(1000);
    c.on_peer_credit(u32::MAX, 0).unwrap();
    c.on_sent(u32::MAX - 10);
    c.on_peer_credit(100, u32::MAX - 10).unwrap();
    c.on_sent(60);
    assert_eq!(c.tx_cnt(), 49);
    assert_eq!(c.peer_free(), 40);
    c.on_peer_credit(100, 20).unwrap(); // fwd_cnt wrapped too
    assert_eq!(c.peer_free(), 71);
}

#[test]
fn a_peer_shrinking_its_buffer_gives_zero_not_a_wrapped_huge_credit() {
    let mut c = Credit::new(1000);
    c.on_peer_credit(4096, 0).unwrap();
    c.on_sent(4000);
    c.on_peer_credit(1024, 0).unwrap();
    assert_eq!(c.peer_free(), 0);
}

#[test]
fn fwd_cnt_may_not_go_back_nor_past_what_was_sent() {
    let mut c = Credit::new(1000);
    c.on_peer_credit(4096, 0).unwrap();
    c.on_sent(100);
    c.on_peer_credit(4096, 50).unwrap();
    assert!(matches!(
        c.on_peer_credit(4096, 101),
        Err(CreditError::FwdCntOutOfRange {
            fwd_cnt: 101,
            low: 50,
            high: 100
        })
    ));
    assert!(c.on_peer_credit(4096, 49).is_err());
    // A wrapped "backwards" value far away is out of range too.
    assert!(c.on_peer_credit(4096, u32::MAX).is_err());
    assert_eq!(c.on_peer_credit(4096, 50), Ok(false));
}

#[test]
fn receiving_past_our_buffer_is_over_credit() {
    let mut c = Credit::new(100);
    c.on_received(60).unwrap();
    assert_eq!(
        c.on_received(41),
        Err(CreditError::OverCredit { len: 41, free: 40 })
    );
    c.on_received(40).unwrap();
    assert_eq!(c.in_use(), 100);
    c.on_consumed(30);
    assert_eq!(c.in_use(), 70);
    c.on_received(30).unwrap();
    assert!(c.on_received(1).is_err());
    let msg = CreditError::OverCredit { len: 1, free: 0 }.to_string();
    assert!(
        msg.contains("1 bytes") && msg.contains("0 bytes of credit"),
        "{msg}"
    );
}

#[test]
fn credit_update_is_due_when_the_peer_is_likely_waiting() {
    let mut c = Credit::new(1000);
    assert!(!c.update_due(), "nothing consumed");
    c.on_received(200).unwrap();
    c.on_consumed(100);
    assert!(
        !c.update_due(),
        "little consumed, the peer still sees 800 free"
    );
    c.on_consumed(100);
    assert!(c.update_due(), "everything consumed: tell the peer");
    c.advertise();
    c.on_received(800).unwrap();
    c.on_consumed(1);
    assert!(c.update_due(), "the peer sees less than a quarter free");
    assert_eq!(c.advertise(), (1000, 201));
    assert!(!c.update_due());
    c.on_consumed(500);
    assert!(c.update_due());
    c.advertise();
    assert_eq!(c.peer_view_free(), 701);

    // Half the buffer consumed while the peer still sees plenty free.
    let mut c = Credit::new(1000);
    c.on_received(600).unwrap();
    c.advertise();
    c.on_consumed(499);
    assert!(!c.update_due());
    c.on_consumed(1);
    assert!(c.update_due());
}

#[test]
fn relay_window_caps_credit_and_checks_every_step() {
    let cap = 1000;
    let mut w = RelayWindow::new();
    assert_eq!(
        w.on_send(1),
        Err(CreditError::OverCredit { len: 1, free: 0 })
    );
    // The receiver advertises more than the cap: the sender is shown the cap.
    assert_eq!(w.on_receiver_credit(1 << 20, 0, cap), Ok(cap));
    assert_eq!(w.sender_free(), cap);
    w.on_send(600).unwrap();
    assert!(w.on_send(401).is_err());
    w.on_send(400).unwrap();
    assert_eq!((w.held(), w.outstanding()), (1000, 1000));
    // fwd_cnt cannot pass what was delivered.
    assert!(w.on_receiver_credit(1 << 20, 1, cap).is_err());
    w.on_delivered(700).unwrap();
    assert_eq!(
        w.on_delivered(301),
        Err(CreditError::OverDelivered {
            len: 301,
            pending: 300
        })
    );
    w.on_receiver_credit(1 << 20, 700, cap).unwrap();
    assert_eq!(w.sender_free(), 700);
    assert!(w.held() <= cap && w.outstanding() <= cap);
}

#[test]
fn relay_window_keeps_an_older_larger_grant() {
    // The sender may have acted on an earlier, larger buf_alloc: shrinking does not retract it.
    let mut w = RelayWindow::new();
    w.on_receiver_credit(1000, 0, u32::MAX).unwrap();
    w.on_receiver_credit(10, 0, u32::MAX).unwrap();
    assert_eq!(w.sender_free(), 1000);
    w.on_send(1000).unwrap();
    assert!(w.on_send(1).is_err());
}

#[test]
fn relay_window_wraps() {
    let cap = 4096;
    let mut w = RelayWindow::new();
    let mut fwd = 0u32;
    // Push 2^32 + a bit through in 4 KiB steps; the window never drifts.
    w.on_receiver_credit(cap, fwd, cap).unwrap();
    for _ in 0..(1u64 << 20) + 3 {
        w.on_send(cap).unwrap();
        w.on_delivered(cap).unwrap();
        fwd = fwd.wrapping_add(cap);
        w.on_receiver_credit(cap, fwd, cap).unwrap();
        assert_eq!(w.held(), 0);
    }
    assert_eq!(w.sender_free(), cap);
}
