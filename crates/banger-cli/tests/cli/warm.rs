//! Warm start against the fake Firecracker, in a private network namespace: `image warm`
//! makes a template, `vm create` restores from it (exactly `PUT /snapshot/load`, no
//! `InstanceStart`, the fake validating every request against `firecracker.yaml`) and the VM
//! execs; `--cold` boots; a template whose files are gone, or whose state the VMM refuses,
//! falls back to a cold boot with a warning and is removed; `image delete` removes the
//! templates.

use std::path::{Path, PathBuf};

use crate::common::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// The fake's request log (every VMM of the home appends to it): its lines from `from` on.
fn requests_since(log: &Path, from: usize) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .skip(from)
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn line_count(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .count()
}

fn paths(requests: &[serde_json::Value]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r["method"] != "GET")
        .map(|r| {
            format!(
                "{} {}",
                r["method"].as_str().unwrap(),
                r["path"].as_str().unwrap()
            )
        })
        .collect()
}

/// The template directories in the home's state (not the staging ones).
fn template_dirs(home: &Home) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(home.path().join("state/templates")) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

fn create(home: &Home, name: &str, extra: &[&str]) -> String {
    let mut args = vec!["vm", "create", "--name", name, "--image", "test-img"];
    args.extend_from_slice(extra);
    let out = home.run(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn a_vm_restored_from_a_template_loads_the_snapshot_and_execs() {
    let Some(mut home) = Home::for_vms("") else {
        return;
    };
    // A daemon started with the fake's request log from here on.
    home.ok(&["daemon", "stop"]);
    let log = home.path().join("fc-requests.jsonl");
    home.set_env("BANGER_FAKE_FC_LOG", log.clone());

    let out = home.run(&["image", "warm", "test-img"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made = paths(&requests_since(&log, 0));
    assert!(made.contains(&"PUT /actions".to_string()), "{made:?}");
    let saved = made.iter().position(|p| p == "PUT /snapshot/create");
    assert!(
        saved.is_some_and(|i| i > 0 && made[i - 1] == "PATCH /vm"),
        "the template is paused and saved: {made:?}"
    );
    let show = home.ok(&["image", "show", "test-img"]);
    assert!(
        show.contains("firecracker 2 vCPU 2048 MiB ("),
        "image show lists the template with its size:\n{show}"
    );
    assert_eq!(template_dirs(&home).len(), 1);

    let from = line_count(&log);
    let err = create(&home, "warm1", &[]);
    assert!(err.contains("restore"), "{err}");
    assert!(err.contains("identity"), "{err}");
    assert_eq!(
        paths(&requests_since(&log, from)),
        ["PUT /snapshot/load"],
        "a restore is exactly a snapshot load, no InstanceStart"
    );
    let vm = home.vm("warm1");
    assert_eq!(vm["state"], "running");
    assert!(vm["restored_from"].is_string(), "{vm}");
    assert_eq!(vm["disk_clone"], "sparse copy");
    let text = home.ok(&["vm", "show", "warm1"]);
    assert!(
        text.contains("restored from template") && text.contains("(sparse copy disks)"),
        "{text}"
    );
    let dir = PathBuf::from(vm["dir"].as_str().unwrap());
    assert!(dir.join("root.ext4").is_file() && dir.join("work.ext4").is_file());
    assert_eq!(
        home.ok(&["vm", "exec", "warm1", "-T", "--", "echo", "hello"]),
        "hello\n"
    );

    // --cold boots, even with a template there.
    let from = line_count(&log);
    create(&home, "cold1", &["--cold"]);
    let booted = paths(&requests_since(&log, from));
    assert!(booted.contains(&"PUT /actions".to_string()), "{booted:?}");
    assert!(!booted.iter().any(|p| p.contains("snapshot")), "{booted:?}");
    assert!(home.vm("cold1").get("restored_from").is_none());
}

#[test]
fn a_broken_template_falls_back_to_a_cold_boot_and_image_delete_removes_templates() {
    let Some(home) = Home::for_vms("") else {
        return;
    };
    home.ok(&["image", "warm", "test-img"]);
    let dirs = template_dirs(&home);
    assert_eq!(dirs.len(), 1);
    std::fs::remove_file(dirs[0].join("memory")).unwrap();

    let err = create(&home, "fallback", &[]);
    assert!(
        err.contains("warm start: warning: template") && err.contains("memory is missing"),
        "{err}"
    );
    let vm = home.vm("fallback");
    assert_eq!(vm["state"], "running");
    assert!(vm.get("restored_from").is_none(), "{vm}");
    assert!(
        template_dirs(&home).is_empty(),
        "the bad template is removed"
    );
    let show = home.ok(&["image", "show", "test-img"]);
    assert!(
        show.lines()
            .any(|l| l.starts_with("templates") && l.trim_end().ends_with('-')),
        "{show}"
    );

    // A state the VMM refuses: the restore fails, is undone, and the VM boots cold.
    home.ok(&["image", "warm", "test-img"]);
    let dirs = template_dirs(&home);
    std::fs::write(dirs[0].join("vmstate"), "not a snapshot").unwrap();
    let err = create(&home, "refused", &[]);
    assert!(
        err.contains("warning: restoring from template") && err.contains("boots cold"),
        "{err}"
    );
    assert!(err.contains("start VMM"), "booted cold: {err}");
    assert_eq!(home.vm("refused")["state"], "running");
    assert!(
        template_dirs(&home).is_empty(),
        "the bad template is removed"
    );

    home.ok(&["image", "warm", "test-img"]);
    assert_eq!(template_dirs(&home).len(), 1);
    home.ok(&["vm", "delete", "fallback", "refused"]);
    home.ok(&["image", "delete", "test-img"]);
    assert!(
        template_dirs(&home).is_empty(),
        "image delete removes its templates"
    );
}
