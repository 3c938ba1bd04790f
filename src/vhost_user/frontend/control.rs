//! The control path of the played VMM: vhost-user messages (negotiation, memory table, ring
//! set-up, starting and stopping queues) and the hostile ones a broken VMM would send.

use super::*;

impl VmmFrontend {
    /// SET_OWNER, GET/SET_FEATURES (VERSION_1, SEQPACKET, EVENT_IDX if configured, protocol
    /// features), GET/SET_PROTOCOL_FEATURES (CONFIG, MQ, REPLY_ACK: every later request waits
    /// for the device's verdict), GET_QUEUE_NUM, GET_CONFIG. Returns the guest's CID.
    pub fn negotiate(&mut self) -> Result<u64, FrontendError> {
        self.vhost.set_owner()?;
        let offered = self.vhost.get_features()?;
        let mut want = (1u64 << F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.cfg.seqpacket {
            want |= 1u64 << VIRTIO_VSOCK_F_SEQPACKET;
        }
        if self.cfg.event_idx {
            want |= 1u64 << F_EVENT_IDX;
        }
        if offered & want != want {
            return Err(FrontendError::MissingFeatures(want & !offered));
        }
        self.vhost.set_features(want)?;
        self.features = want;
        let proto = self.vhost.get_protocol_features()?;
        let need = VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK;
        if !proto.contains(need) {
            return Err(FrontendError::MissingFeatures((need - proto).bits()));
        }
        self.vhost.set_protocol_features(need)?;
        self.vhost.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        let queues = self.vhost.get_queue_num()?;
        if queues != NUM_QUEUES as u64 {
            return Err(FrontendError::Memory(format!("device has {queues} queues")));
        }
        let cid = self.read_cid()?;
        self.cid = Some(cid);
        Ok(cid)
    }

    /// GET_CONFIG of the whole config space: the guest's CID.
    pub fn read_cid(&mut self) -> Result<u64, FrontendError> {
        let (_, bytes) = self.vhost.get_config(
            0,
            CONFIG_SIZE as u32,
            VhostUserConfigFlags::WRITABLE,
            &[0u8; CONFIG_SIZE],
        )?;
        let arr: [u8; CONFIG_SIZE] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| FrontendError::BadConfig(bytes.len()))?;
        Ok(u64::from_le_bytes(arr))
    }

    /// The memory region as SET_MEM_TABLE describes it (fd, host address, guest address).
    pub fn region_info(&self) -> Result<VhostUserMemoryRegionInfo, FrontendError> {
        let region = self
            .mem
            .iter()
            .next()
            .ok_or_else(|| FrontendError::Memory("no region".into()))?;
        VhostUserMemoryRegionInfo::from_guest_region(region).map_err(FrontendError::Vhost)
    }

    /// SET_MEM_TABLE with the guest's one region.
    pub fn set_mem_table(&mut self) -> Result<(), FrontendError> {
        let info = self.region_info()?;
        self.vhost.set_mem_table(&[info])?;
        Ok(())
    }

    /// Host (this process's) address of guest-physical `gpa`.
    fn host_addr(&self, gpa: u64) -> Result<u64, FrontendError> {
        let info = self.region_info()?;
        gpa.checked_sub(info.guest_phys_addr)
            .map(|off| info.userspace_addr + off)
            .ok_or_else(|| FrontendError::Memory(format!("{gpa:#x} is below guest memory")))
    }

    /// SET_VRING_ADDR for queue `index` with the frontend's real ring addresses.
    pub fn set_vring_addr(&mut self, index: u16) -> Result<(), FrontendError> {
        let l = self.layout.rings[index as usize];
        let data = VringConfigData {
            queue_max_size: self.cfg.queue_size,
            queue_size: self.cfg.queue_size,
            flags: 0,
            desc_table_addr: self.host_addr(l.desc)?,
            used_ring_addr: self.host_addr(l.used)?,
            avail_ring_addr: self.host_addr(l.avail)?,
            log_addr: None,
        };
        self.vhost.set_vring_addr(index as usize, &data)?;
        Ok(())
    }

    /// Guest-physical addresses of queue `index`'s avail and used rings.
    pub fn ring_parts(&self, index: u16) -> (u64, u64) {
        let l = self.layout.rings[index as usize];
        (l.avail, l.used)
    }

    /// SET_VRING_ADDR for queue `index` with rings at the given guest-physical addresses
    /// (translated to this process's mapping, as a VMM does).
    pub fn set_vring_addr_gpa(
        &mut self,
        index: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> Result<(), FrontendError> {
        let data = VringConfigData {
            queue_max_size: self.cfg.queue_size,
            queue_size: self.cfg.queue_size,
            flags: 0,
            desc_table_addr: self.host_addr(desc)?,
            used_ring_addr: self.host_addr(used)?,
            avail_ring_addr: self.host_addr(avail)?,
            log_addr: None,
        };
        self.vhost.set_vring_addr(index as usize, &data)?;
        Ok(())
    }

    /// Hostile: SET_VRING_ADDR for queue `index` with a descriptor table at a host address
    /// outside the memory table.
    pub fn send_bad_vring_addr(&mut self, index: u16) -> Result<(), FrontendError> {
        let l = self.layout.rings[index as usize];
        let data = VringConfigData {
            queue_max_size: self.cfg.queue_size,
            queue_size: self.cfg.queue_size,
            flags: 0,
            desc_table_addr: 0x10,
            used_ring_addr: self.host_addr(l.used)?,
            avail_ring_addr: self.host_addr(l.avail)?,
            log_addr: None,
        };
        self.vhost.set_vring_addr(index as usize, &data)?;
        Ok(())
    }

    /// Brings queue `index` up at avail index `base`: NUM, ADDR, BASE, CALL, KICK, ENABLE.
    pub fn start_queue(&mut self, index: u16, base: u16) -> Result<(), FrontendError> {
        let i = index as usize;
        self.vhost.set_vring_num(i, self.cfg.queue_size)?;
        self.set_vring_addr(index)?;
        self.vhost.set_vring_base(i, base)?;
        self.vhost.set_vring_call(i, &self.call[i])?;
        self.vhost.set_vring_kick(i, &self.kick[i])?;
        self.vhost.set_vring_enable(i, true)?;
        Ok(())
    }

    /// Brings all queues up at `bases` (zeros for a fresh device).
    pub fn start_queues(&mut self, bases: [u16; NUM_QUEUES]) -> Result<(), FrontendError> {
        for (i, base) in bases.into_iter().enumerate() {
            self.start_queue(i as u16, base)?;
        }
        Ok(())
    }

    /// Stops the device as QEMU does: SET_VRING_ENABLE 0 and GET_VRING_BASE on every queue.
    /// Returns the bases (the device's next avail index of each queue).
    pub fn stop_queues(&mut self) -> Result<[u16; NUM_QUEUES], FrontendError> {
        let mut bases = [0u16; NUM_QUEUES];
        for (i, base) in bases.iter_mut().enumerate() {
            self.vhost.set_vring_enable(i, false)?;
            // The base is an avail index: 16 bits on a split ring.
            *base = self.vhost.get_vring_base(i)? as u16;
        }
        Ok(bases)
    }

    /// The vhost-user endpoint, to send requests in any order (hostile tests).
    pub fn vhost(&mut self) -> &mut Frontend {
        &mut self.vhost
    }

    /// Hostile: writes raw bytes on the vhost-user socket.
    pub fn write_raw(&mut self, bytes: &[u8]) -> Result<(), FrontendError> {
        self.sock
            .write_all(bytes)
            .map_err(io_err("writing to the socket"))
    }

    /// Waits up to `timeout` (a give-up limit) for the device to close the connection;
    /// discards anything it sends meanwhile. Returns whether it closed.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<bool, FrontendError> {
        let deadline = Instant::now() + timeout;
        self.sock
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(io_err("socket timeout"))?;
        let mut buf = [0u8; 256];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(true),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(io_err("reading the socket")(e)),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        self.sock
            .set_read_timeout(Some(REPLY_LIMIT))
            .map_err(io_err("socket timeout"))?;
        Ok(false)
    }
}
