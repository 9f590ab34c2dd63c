//! Unit tests of the splicing editor.
use super::*;

fn edit(
    text: &str,
    f: impl FnOnce(&mut Editor) -> Result<(), YamlError>,
) -> Result<String, YamlError> {
    let root = yaml::parse(text).unwrap().unwrap();
    let mut e = Editor::new(text, root);
    f(&mut e)?;
    e.finish()
}

#[test]
fn scalar_replacement_keeps_comments_and_quotes_elsewhere() {
    let text = "# head\na:\n  b: old # why\n  c: \"q\"\n";
    let out = edit(text, |e| e.set_scalar(&[key("a"), key("b")], "new", false)).unwrap();
    assert_eq!(out, "# head\na:\n  b: new # why\n  c: \"q\"\n");
}

#[test]
fn lists_in_block_and_flow_style() {
    let text = "e:\n    - a\n    - b\nf: [x]\ng:\nh: 1\n";
    let out = edit(text, |e| {
        e.set_list(&[key("e")], &["z".into()])?;
        e.set_list(&[key("f")], &["u".into(), "w".into()])?;
        e.set_list(&[key("g")], &["v".into()])
    })
    .unwrap();
    assert_eq!(out, "e:\n    - z\nf: [u, w]\ng: [v]\nh: 1\n");
}

#[test]
fn insert_and_remove_entries() {
    let text = "- b: 1\n  c: 2\n  d:\n    - x\n";
    let out = edit(text, |e| {
        e.insert_entry(
            &[Step::Index(0)],
            "a",
            NewValue::String("0".into()),
            Place::First,
        )?;
        e.insert_entry(
            &[Step::Index(0)],
            "e",
            NewValue::Literal("true".into()),
            Place::After("d"),
        )?;
        e.insert_entry(
            &[Step::Index(0)],
            "f",
            NewValue::List(vec!["1.2.3.4".into()]),
            Place::After("e"),
        )?;
        e.remove_entry(&[Step::Index(0)], "c")
    })
    .unwrap();
    assert_eq!(
        out,
        "- b: 1\n  a: \"0\"\n  d:\n    - x\n  e: true\n  f:\n    - 1.2.3.4\n"
    );
    let out = edit("- b: 1\n  c: 2\n", |e| {
        e.remove_entry(&[Step::Index(0)], "b")
    })
    .unwrap();
    assert_eq!(out, "- c: 2\n");
}

#[test]
fn remove_list_items() {
    let text = "l:\n- name: a\n  x: 1\n- name: b\n# keep\n- name: c\n";
    let out = edit(text, |e| {
        e.remove_item(&[key("l")], 2)?;
        e.remove_item(&[key("l")], 0)
    })
    .unwrap();
    assert_eq!(out, "l:\n- name: b\n# keep\n");
}

#[test]
fn a_splice_that_changes_structure_is_refused() {
    // A value continued on the next line: replacing the first line only
    // would leave the rest; the verification catches it.
    let text = "a:\n  b: one\n    two\n  c: 1\n";
    let root = yaml::parse(text).unwrap().unwrap();
    let mut e = Editor::new(text, root);
    e.splices.push((7..10, "x: y".into()));
    assert!(e.finish().is_err());
}

/// kubectl accepts a kubeconfig written as JSON; entries can be added and
/// removed and the result is still JSON (before: "expected a block mapping").
#[test]
fn json_objects_get_entries_added_and_removed_and_stay_json() {
    let text = "{\n    \"clusters\": [\n        {\n            \"name\": \"c\",\n            \"cluster\": {\n                \"server\": \"https://127.0.0.1:1\",\n                \"insecure-skip-tls-verify\": true,\n                \"certificate-authority-data\": \"QQ==\"\n            }\n        }\n    ]\n}\n";
    let cluster = [key("clusters"), Step::Index(0), key("cluster")];
    let out = edit(text, |e| {
        e.insert_entry(
            &cluster,
            "tls-server-name",
            NewValue::String("localhost".into()),
            Place::After("server"),
        )?;
        e.remove_entry(&cluster, "insecure-skip-tls-verify")
    })
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(
        json["clusters"][0]["cluster"],
        serde_json::json!({
            "server": "https://127.0.0.1:1",
            "tls-server-name": "localhost",
            "certificate-authority-data": "QQ=="
        }),
        "{out}"
    );
    // The last entry, the first entry, and an empty object.
    let out = edit(text, |e| {
        e.remove_entry(&cluster, "certificate-authority-data")?;
        e.insert_entry(
            &cluster,
            "a",
            NewValue::Literal("true".into()),
            Place::First,
        )
    })
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(json["clusters"][0]["cluster"]["a"], true, "{out}");
    assert!(json["clusters"][0]["cluster"]["certificate-authority-data"].is_null());
    let out = edit("{\"m\": {}}", |e| {
        e.insert_entry(
            &[key("m")],
            "k",
            NewValue::List(vec!["x".into()]),
            Place::First,
        )
    })
    .unwrap();
    assert_eq!(out, "{\"m\": {\"k\": [\"x\"]}}");
}
