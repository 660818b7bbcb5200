//! `outpost audit verify` against a store edited offline.

use outpost_fleet::store::{SledStore, Store};

use crate::support::*;

/// Copies a stopped server's data dir.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn audit_verify_detects_an_edited_a_reordered_and_a_removed_entry() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);
    for (name, role) in [
        ("ann", "approver"),
        ("bob", "approver"),
        ("otto", "operator"),
    ] {
        server.token(name, role);
    }
    let admin = server.admin.clone();
    let v = server.json(&admin, &["audit", "verify"], 0);
    assert_eq!(v["entries"], 4, "{v}");
    server.stop();

    type Tamper = fn(&SledStore);
    let cases: [(&str, Tamper, &str); 3] = [
        (
            "edited",
            |st| {
                let mut e = st.audit_entries().unwrap()[2].clone();
                e.details["role"] = "admin".into();
                st.put_audit(&e).unwrap();
            },
            "audit entry 3 was edited",
        ),
        (
            "reordered",
            |st| {
                let all = st.audit_entries().unwrap();
                st.put_audit_at(2, &all[2]).unwrap();
                st.put_audit_at(3, &all[1]).unwrap();
            },
            "audit entry 3 is out of order",
        ),
        (
            "removed",
            |st| st.remove_audit_at(2).unwrap(),
            "audit entry 2 was removed",
        ),
    ];
    for (what, tamper, expect) in cases {
        let case = dir.path().join(what);
        copy_dir(dir.path().join("data").as_path(), &case.join("data"));
        {
            let st = SledStore::open(&case.join("data/store")).unwrap();
            tamper(&st);
            st.flush().unwrap();
        }
        let server = Server::start(&case, &[]);
        let v = server.json(&admin, &["audit", "verify"], 1);
        assert_eq!(v["check"], "audit_chain", "{v}");
        assert!(v["error"].as_str().unwrap().contains(expect), "{what}: {v}");
        // The text form says so too.
        let out = server.cli(&admin, &["audit", "verify"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(expect));
    }
}
