//! Protobuf messages of the Switchboard bus (`switchboard/bus/v1/bus.proto`,
//! prost) and the operator's admin gRPC API
//! (`switchboard/admin/v1/admin.proto`, tonic: server and client).
#![forbid(unsafe_code)]

/// The bus between gateways and workers (`switchboard.bus.v1`).
pub mod bus {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/switchboard.bus.v1.rs"));
}

/// The admin API (`switchboard.admin.v1`).
pub mod admin {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/switchboard.admin.v1.rs"));

    /// The encoded file descriptor set of the admin API, for gRPC
    /// reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/admin_descriptor.bin"));
}

pub use prost::Message;
