// SPDX-License-Identifier: MIT
//! The agent of resumable flake instances and the protocol launchers use to reach it.
//!
//! A resumable instance runs `flake-agent` as its PID 1. Each call of the flake connects to
//! the agent's socket, hands over its stdio (or asks for a terminal), and gets the app's exit
//! status back, without starting any engine process. `flake_protocol::proto` is the wire format,
//! [`transport`] the descriptor passing, [`daemon`] the agent itself, [`client`] the launcher's end of a call, [`framed`] a call
//! whose streams travel as frames (into a VM).

#![deny(missing_docs)]

// The protocol this crate speaks, under the names its modules use.
use flake_protocol::proto;

pub mod client;
pub mod command;
pub mod daemon;
pub mod framed;
pub mod transport;
pub mod user;
