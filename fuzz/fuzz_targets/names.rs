// SPDX-License-Identifier: MIT
//! Flake and instance names: whatever is accepted is safe as one file-name component and
//! keeps its spelling; whatever is refused gets an error message.

#![no_main]

use std::path::{Component, Path};

use flake_pilot_fuzz as _;
use flakes::{FlakeName, InstanceName};
use libfuzzer_sys::fuzz_target;

fn one_normal_component(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(c)), None) if c == name
    )
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match FlakeName::new(text) {
        Ok(name) => {
            assert_eq!(name.as_str(), text);
            assert!(one_normal_component(text), "{text:?}");
            assert!(!text.starts_with('.') && text.len() <= 200);
            assert!(!text.chars().any(|c| c.is_control() || c.is_whitespace()));
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
    match InstanceName::new(text) {
        Ok(name) => {
            assert_eq!(name.to_string(), text);
            assert!(one_normal_component(text), "{text:?}");
            assert!((1..=63).contains(&text.len()));
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@=_-".contains(&b)));
        }
        Err(err) => {
            let _ = err.to_string();
        }
    }
});
