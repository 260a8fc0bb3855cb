// SPDX-License-Identifier: MIT
//! Deep merge of YAML documents, used to apply `NAME.d/*.yaml` on top of `NAME.yaml`.
//!
//! The rule is the one admins expect from drop-in directories: mappings merge key by key
//! (recursively), and for anything else (scalars, sequences, `~`) the later document wins as a
//! whole. A fragment can therefore change one option without restating its whole section, and
//! can reset a value with `~`. The original implementation replaced whole top-level sections
//! instead, which made a one-line override wipe the rest of `container:`.

use yaml_serde::Value;

/// Merges `overlay` into `base`, with `overlay` winning.
///
/// # Example
/// ```
/// let mut base: yaml_serde::Value = yaml_serde::from_str("a: {x: 1, y: 2}").unwrap();
/// let over: yaml_serde::Value = yaml_serde::from_str("a: {y: 3}").unwrap();
/// flakes::config::merge::deep_merge(&mut base, over);
/// assert_eq!(base, yaml_serde::from_str::<yaml_serde::Value>("a: {x: 1, y: 3}").unwrap());
/// ```
pub fn deep_merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Mapping(base_map), Value::Mapping(over_map)) => {
            for (key, over_value) in over_map {
                match base_map.get_mut(&key) {
                    Some(base_value) => deep_merge(base_value, over_value),
                    None => {
                        base_map.insert(key, over_value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        yaml_serde::from_str(text).unwrap()
    }

    fn merged(base: &str, overlays: &[&str]) -> Value {
        let mut value = yaml(base);
        for overlay in overlays {
            deep_merge(&mut value, yaml(overlay));
        }
        value
    }

    #[test]
    fn mappings_merge_key_by_key() {
        let got = merged(
            "container: {name: a, runtime: {runas: root, podman: [x]}}",
            &["container: {runtime: {resume: true}}"],
        );
        let want = yaml("container: {name: a, runtime: {runas: root, podman: [x], resume: true}}");
        assert_eq!(got, want);
    }

    #[test]
    fn sequences_are_replaced_not_appended() {
        let got = merged("podman: [a, b]", &["podman: [c]"]);
        assert_eq!(got, yaml("podman: [c]"));
    }

    #[test]
    fn later_fragments_win_in_order() {
        let got = merged("name: a", &["name: b", "name: c"]);
        assert_eq!(got, yaml("name: c"));
    }

    #[test]
    fn null_resets_a_value() {
        let got = merged("base_container: base", &["base_container: ~"]);
        assert_eq!(got, yaml("base_container: ~"));
    }

    #[test]
    fn mapping_replaces_null_section() {
        let got = merged("include: ~", &["include: {tar: [x.tar]}"]);
        assert_eq!(got, yaml("include: {tar: [x.tar]}"));
    }

    #[test]
    fn scalar_replaces_mapping_and_back() {
        assert_eq!(merged("a: {b: 1}", &["a: 2"]), yaml("a: 2"));
        assert_eq!(merged("a: 2", &["a: {b: 1}"]), yaml("a: {b: 1}"));
    }

    #[test]
    fn empty_fragment_changes_nothing() {
        assert_eq!(merged("a: {b: 1}", &["{}"]), yaml("a: {b: 1}"));
    }
}
