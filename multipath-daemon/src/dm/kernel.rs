//! [`DmBackend`] on the kernel's device-mapper, through the devicemapper crate: the only
//! code in mpathd that issues dm ioctls.

use super::{DmBackend, DmError, MapInfo, Message, MultipathStatus, MultipathTable};

/// The kernel's device-mapper.
pub struct KernelDm {
    _private: (),
}

impl KernelDm {
    /// Opens /dev/mapper/control.
    pub fn new() -> Result<Self, DmError> {
        Err(DmError::Kernel {
            name: String::new(),
            op: "open /dev/mapper/control",
            message: "not implemented yet".into(),
        })
    }
}

impl DmBackend for KernelDm {
    fn list(&self) -> Result<Vec<MapInfo>, DmError> {
        unimplemented!()
    }
    fn info(&self, _name: &str) -> Result<Option<MapInfo>, DmError> {
        unimplemented!()
    }
    fn table(&self, _name: &str) -> Result<MultipathTable, DmError> {
        unimplemented!()
    }
    fn status(&self, _name: &str) -> Result<MultipathStatus, DmError> {
        unimplemented!()
    }
    fn create(&self, _: &str, _: &str, _: u64, _: &MultipathTable) -> Result<MapInfo, DmError> {
        unimplemented!()
    }
    fn reload(&self, _: &str, _: u64, _: &MultipathTable) -> Result<(), DmError> {
        unimplemented!()
    }
    fn remove(&self, _: &str) -> Result<(), DmError> {
        unimplemented!()
    }
    fn message(&self, _: &str, _: &Message) -> Result<(), DmError> {
        unimplemented!()
    }
}
