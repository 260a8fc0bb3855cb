// SPDX-License-Identifier: MIT
//! The wire protocol of flake-pilot: how a launcher and an instance talk, whether the
//! instance is a container (its agent, reached over a unix socket) or a VM (its guest init
//! `sci`, over vsock or virtio console ports).
//!
//! [`proto`] is the frame format and what each frame means; [`timing`] the waits the two
//! sides rely on of each other, with their inequalities checked at compile time. The ends of
//! a call live elsewhere: the agent, the launcher's client and the frame relay in the
//! `flake-agent` crate, the VM channel in `vm-pilot`.

#![deny(missing_docs)]

pub mod proto;
pub mod timing;
