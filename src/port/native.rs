//! [`NativePort`]: a vmq virtqueue pair (rx, tx) in guest memory carrying vmq's wire header.

use vm_memory::GuestMemoryBackend;

use super::{Asked, Drain, Notifier, Port, RunQueueClock};
use crate::virtio::{
    DeliverError, DeviceError, DevicePort, GuestView, Payload, TxChain, RX_QUEUE, TX_QUEUE,
};
use crate::wire::pages::HANDOFF;
use crate::wire::{MsgHeader, WireError};

/// A native port: the device side of a guest's vmq queues and how to notify that guest.
pub struct NativePort<M> {
    dev: DevicePort<M>,
    notifier: Box<dyn Notifier>,
    run_queue: Option<Box<dyn RunQueueClock>>,
    /// Its guest may send page hand-off messages (it is inside a [`super::HandoffPort`]).
    handoff: bool,
}

impl<M> NativePort<M> {
    /// A port over `dev` (queues the driver made ready) that tells its guest through `notifier`.
    pub fn new(dev: DevicePort<M>, notifier: Box<dyn Notifier>) -> Self {
        Self {
            dev,
            notifier,
            run_queue: None,
            handoff: false,
        }
    }

    /// The same port, letting its guest send page hand-off messages
    /// ([`HANDOFF`](crate::wire::pages::HANDOFF)); only a [`super::HandoffPort`] around it
    /// knows what to do with them. Without it such a message is a protocol fault.
    pub fn with_handoff(mut self) -> Self {
        self.handoff = true;
        self
    }

    /// The same port, telling the switch how long its guest's vCPU waited for a CPU.
    pub fn with_run_queue_clock(mut self, clock: Box<dyn RunQueueClock>) -> Self {
        self.run_queue = Some(clock);
        self
    }

    /// Its device side, for inspection.
    pub fn device(&self) -> &DevicePort<M> {
        &self.dev
    }
}

impl<M: GuestMemoryBackend + Send + 'static> Port<M> for NativePort<M> {
    fn memory(&self) -> &GuestView<M> {
        self.dev.view()
    }

    fn take_sent(&mut self, max: usize, sent: &mut Vec<TxChain>) -> Result<usize, DeviceError> {
        if self.handoff {
            return self.dev.pop_tx_batch(max, |c| sent.push(c));
        }
        // Page references mean nothing to a port that does not hand pages off: the batch ends
        // before the first message that carries them, and the port faults. Checked as each
        // message is taken, not in a second pass over the batch.
        let mut bad = false;
        let r = self.dev.pop_tx_batch(max, |c| {
            bad |= c.header.handoff();
            if !bad {
                sent.push(c);
            }
        });
        if bad {
            return Err(DeviceError::BadHeader(WireError::UnknownFlags(HANDOFF)));
        }
        r
    }

    fn max_held(&self) -> u32 {
        u32::from(self.dev.tx_queue().size())
    }

    fn copy_payload(&mut self, msg: &TxChain, buf: &mut [u8]) -> Result<usize, DeviceError> {
        self.dev.read_payload(msg, buf)
    }

    fn release(&mut self, msg: &TxChain) -> Result<(), DeviceError> {
        self.dev.complete_tx(msg.head)
    }

    fn deliver(
        &mut self,
        header: &MsgHeader,
        payload: &Payload<'_, M>,
    ) -> Result<bool, DeliverError> {
        self.dev.deliver(header, payload).map(|(_, fits)| fits)
    }

    fn publish(&mut self) -> bool {
        // Both, every time: a used ring with nothing new costs one comparison.
        let rx = self.dev.publish_rx();
        let tx = self.dev.publish_tx();
        rx | tx
    }

    fn publish_sides(&mut self) -> Asked {
        Asked {
            rx: self.dev.publish_rx(),
            tx: self.dev.publish_tx(),
        }
    }

    fn notify(&self) {
        self.notifier.notify();
    }

    fn drain(&self) -> Drain {
        Drain {
            consumed: self.dev.rx_consumer_index(),
            free: self.dev.rx_buffers_available(),
            capacity: self.dev.rx_queue_size(),
            held: 0,
            ended: 0,
            broken: 0,
        }
    }

    fn arm_kicks(&mut self, rx_wanted: bool) -> bool {
        let mut busy = self.dev.enable_kicks(TX_QUEUE).unwrap_or(false);
        if rx_wanted {
            busy |= self.dev.enable_kicks(RX_QUEUE).unwrap_or(false);
        }
        busy
    }

    fn disarm_kicks(&mut self) {
        let _ = self.dev.disable_kicks(TX_QUEUE);
        let _ = self.dev.disable_kicks(RX_QUEUE);
    }

    fn run_queue_wait_ns(&self) -> Option<u64> {
        self.run_queue.as_ref().and_then(|c| c.waited_ns())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(all(test, feature = "test-utils"))]
mod tests {
    use super::*;
    use crate::peer::{host_peer, PeerConfig};
    use crate::port::Polling;
    use crate::wire::MsgKind;

    #[test]
    fn a_plain_port_faults_on_page_references_and_keeps_what_came_before() {
        let cfg = PeerConfig {
            queue_size: 16,
            slot_size: 256,
            event_idx: true,
        };
        let (mut peer, dev) = host_peer(cfg).unwrap();
        let mut port = NativePort::new(dev, Box::new(Polling));
        let plain = MsgHeader::new(MsgKind::OneWay, 1, 0, 0);
        let mut refs = plain;
        refs.set_handoff(true);
        for h in [plain, refs, plain] {
            peer.tx.send(&h, &[]).unwrap();
        }
        peer.tx.flush().unwrap();
        let mut sent = Vec::new();
        let r = port.take_sent(16, &mut sent);
        assert!(
            matches!(
                r,
                Err(DeviceError::BadHeader(WireError::UnknownFlags(HANDOFF)))
            ),
            "{r:?}"
        );
        assert_eq!(
            sent.len(),
            1,
            "the message before the bad one is kept, none after"
        );
    }
}
