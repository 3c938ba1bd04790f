//! The data path of the played guest: its driver on the tx and rx rings (send, reclaim, receive,
//! post buffers again) and the call eventfds it waits on.

use super::*;

impl VmmFrontend {
    /// The used index of queue `index` as the device last published it.
    pub fn used_idx(&self, index: u16) -> Result<u16, FrontendError> {
        let view = self.rings[index as usize].memory();
        Ok(crate::virtio::RingMemory::load_u16(
            view,
            self.layout.rings[index as usize].used + 2,
        )?)
    }

    /// Chains the driver made available on queue `index` so far (its avail index).
    pub fn avail_idx(&self, index: u16) -> Result<u16, FrontendError> {
        let view = self.rings[index as usize].memory();
        Ok(crate::virtio::RingMemory::load_u16(
            view,
            self.layout.rings[index as usize].avail + 2,
        )?)
    }

    /// Sends one packet (header and payload) on tx, kicking if the device asks.
    pub fn send(&mut self, packet: &[u8]) -> Result<(), FrontendError> {
        self.reclaim_tx()?;
        let slot = self.cfg.tx_buf_size;
        let len = u32::try_from(packet.len())
            .ok()
            .filter(|&l| l <= slot)
            .ok_or(FrontendError::TooLarge {
                len: packet.len(),
                slot,
            })?;
        let tx = &mut self.rings[TX_QUEUE as usize];
        let head = tx.next_head().ok_or(FrontendError::TxFull)?;
        let addr = self.layout.tx_arena + u64::from(head) * u64::from(slot);
        crate::virtio::RingMemory::write(tx.memory(), addr, packet)?;
        tx.add(&[Buf::readable(addr, len)])?;
        if tx.publish()? {
            self.kick[TX_QUEUE as usize]
                .write(1)
                .map_err(io_err("kicking tx"))?;
        }
        Ok(())
    }

    /// Posts `bufs` on tx as one chain, whatever they hold or point at (a hostile guest's
    /// chain: buffers outside memory, device-writable ones), and kicks if asked.
    pub fn send_chain(&mut self, bufs: &[Buf]) -> Result<(), FrontendError> {
        self.reclaim_tx()?;
        let tx = &mut self.rings[TX_QUEUE as usize];
        tx.add(bufs)?;
        if tx.publish()? {
            self.kick[TX_QUEUE as usize]
                .write(1)
                .map_err(io_err("kicking tx"))?;
        }
        Ok(())
    }

    /// Takes back tx chains the device finished; returns how many.
    pub fn reclaim_tx(&mut self) -> Result<usize, FrontendError> {
        let tx = &mut self.rings[TX_QUEUE as usize];
        Ok(tx.pop_used_batch(usize::MAX, |_| {})?)
    }

    /// Tx chains sent and not yet returned by the device.
    pub fn tx_outstanding(&self) -> u16 {
        self.rings[TX_QUEUE as usize].outstanding()
    }

    /// Takes the next packet the device delivered on rx, if any, and posts its buffer again.
    pub fn recv(&mut self) -> Result<Option<Vec<u8>>, FrontendError> {
        let size = self.cfg.rx_buf_size;
        let arena = self.layout.rx_arena;
        let rx = &mut self.rings[RX_QUEUE as usize];
        let Some(used) = rx.pop_used()? else {
            return Ok(None);
        };
        let addr = arena + u64::from(used.head) * u64::from(size);
        let mut buf = vec![0u8; used.len.min(size) as usize];
        crate::virtio::RingMemory::read(rx.memory(), addr, &mut buf)?;
        let head = rx.next_head().ok_or(FrontendError::TxFull)?;
        let addr = arena + u64::from(head) * u64::from(size);
        rx.add(&[Buf::writable(addr, size)])?;
        if rx.publish()? {
            self.kick[RX_QUEUE as usize]
                .write(1)
                .map_err(io_err("kicking rx"))?;
        }
        Ok(Some(buf))
    }

    /// Waits up to `timeout` for the device to signal rx or tx (its call eventfds); consumes
    /// the signals. Returns whether one came.
    pub fn wait_call(&self, timeout: Duration) -> Result<bool, FrontendError> {
        let mut fds = [RX_QUEUE, TX_QUEUE].map(|q| libc::pollfd {
            fd: self.call[q as usize].as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `fds` is an array of initialised pollfds that outlives the call, passed with
        // its length; poll writes only their `revents`.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(io_err("waiting for a call")(e));
        }
        for q in [RX_QUEUE, TX_QUEUE] {
            let _ = self.call[q as usize].read();
        }
        Ok(r > 0)
    }

    /// Waits up to `timeout` (a give-up limit) for the next rx packet.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, FrontendError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.recv()? {
                return Ok(Some(p));
            }
            if self.rings[RX_QUEUE as usize].enable_interrupts()? {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.wait_call(deadline - now)?;
        }
    }

    /// Queue `index`'s kick eventfd (what SET_VRING_KICK sends).
    pub fn kick_fd(&self, index: u16) -> &EventFd {
        &self.kick[index as usize]
    }

    /// Queue `index`'s call eventfd (what SET_VRING_CALL sends).
    pub fn call_fd(&self, index: u16) -> &EventFd {
        &self.call[index as usize]
    }
}
