//! Catalogs end to end: `image export` on one home, its directory served over HTTP, a second
//! home with that catalog listing, checking (doctor), auto-pulling it in `vm create` and
//! pulling it by name with `image pull`.

use std::process::Command;

use crate::common::*;

/// A fixed port is free: each home's network namespace has its own.
const PORT: u16 = 8765;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// Serves `dir` with Python's static file server on 127.0.0.1:`PORT` inside `ns`.
fn serve_dir(ns: &str, dir: &std::path::Path) -> std::process::Child {
    let script = format!(
        "import functools, http.server\n\
         h = functools.partial(http.server.SimpleHTTPRequestHandler, directory={dir:?})\n\
         s = http.server.ThreadingHTTPServer(('127.0.0.1', {PORT}), h)\n\
         print('bound', flush=True)\n\
         s.serve_forever()\n",
        dir = dir.display().to_string()
    );
    python_in_ns(ns, &script)
}

#[test]
fn an_exported_image_served_over_http_is_listed_checked_auto_pulled_and_pulled_by_name() {
    let Some(team) = Home::for_vms("") else {
        return;
    };
    // On the team's host: a kernel by name, an image booting it, exported.
    let tree = team.path().join("ktree/boot");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("vmlinux-6.1.7"), b"\x7fELF exported kernel").unwrap();
    let ktree = team.path().join("ktree");
    team.ok(&["kernel", "import", "k1", "--from", ktree.to_str().unwrap()]);
    let rootfs = team.path().join("rootfs.ext4");
    team.ok(&[
        "image",
        "register",
        "--name",
        "team-img",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--kernel-ref",
        "k1",
    ]);
    let out_dir = team.path().join("served");
    let out = team.run(&[
        "image",
        "export",
        "team-img",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bundle = out_dir.join("team-img.tar.zst");
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("team-img.catalog.json")).unwrap())
            .unwrap();
    let entry = &doc["images"][0];
    assert_eq!(doc["version"], 1);
    assert_eq!(entry["url"], "team-img.tar.zst", "relative to the catalog");
    assert_eq!(entry["kernel_ref"], "k1");
    assert_eq!(entry["size"], std::fs::metadata(&bundle).unwrap().len());
    let sha = Command::new("sha256sum").arg(&bundle).output().unwrap();
    let sha = String::from_utf8_lossy(&sha.stdout);
    assert_eq!(
        entry["sha256"].as_str().unwrap(),
        sha.split_whitespace().next().unwrap()
    );
    // The kernel, as a tarball in a kernel catalog beside it.
    let st = Command::new("tar")
        .args(["-C", ktree.to_str().unwrap(), "-czf"])
        .arg(out_dir.join("k1.tar.gz"))
        .arg("boot")
        .status()
        .unwrap();
    assert!(st.success());
    let ktar = std::fs::read(out_dir.join("k1.tar.gz")).unwrap();
    let ksha = Command::new("sha256sum")
        .arg(out_dir.join("k1.tar.gz"))
        .output()
        .unwrap();
    let kernels = serde_json::json!({"version": 1, "kernels": [{
        "name": "k1", "arch": "x86_64", "url": "k1.tar.gz", "size": ktar.len(),
        "sha256": String::from_utf8_lossy(&ksha.stdout).split_whitespace().next().unwrap(),
        "description": "the team's kernel"}]});
    std::fs::write(out_dir.join("kernels.json"), kernels.to_string()).unwrap();

    // Another host: only the catalogs.
    let base = format!("http://127.0.0.1:{PORT}");
    let Some(dev) = Home::for_vms(&format!(
        "default_image = \"team-img\"\ncatalogs = [\"{base}/team-img.catalog.json\", \"{base}/kernels.json\"]\n"
    )) else {
        return;
    };
    let mut server = serve_dir(dev.netns.as_deref().unwrap(), &out_dir);

    let list = dev.ok(&["image", "list", "--available"]);
    let line = list
        .lines()
        .find(|l| l.starts_with("team-img"))
        .unwrap_or_else(|| panic!("{list}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[1], "available", "{list}");
    assert!(
        cols[2].parse::<f64>().is_ok() && cols[3].ends_with("iB"),
        "SIZE: {list}"
    );
    assert!(
        list.starts_with("NAME") && list.contains("STATE") && list.contains("SIZE"),
        "{list}"
    );
    let kernels = dev.ok(&["kernel", "list", "--available", "--json"]);
    let kernels: serde_json::Value = serde_json::from_str(&kernels).unwrap();
    assert_eq!(kernels[0]["name"], "k1");
    assert_eq!(kernels[0]["state"], "available");

    let doctor: serde_json::Value =
        serde_json::from_slice(&dev.run(&["doctor", "--json"]).stdout).unwrap();
    let image_check = doctor
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "default image")
        .unwrap();
    assert_eq!(image_check["status"], "PASS", "{image_check}");
    assert!(
        image_check["detail"]
            .as_str()
            .unwrap()
            .contains("team-img.catalog.json")
    );

    let out = dev.run(&[
        "vm", "create", "--name", "pulled", "--image", "team-img", "--memory", "256M",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    for stage in [
        "pulling from catalog",
        "pull image",
        "pull kernel",
        "ready in",
    ] {
        assert!(err.contains(stage), "no {stage:?} stage in:\n{err}");
    }
    let list: serde_json::Value =
        serde_json::from_str(&dev.ok(&["image", "list", "--available", "--json"])).unwrap();
    assert_eq!(list[0]["state"], "pulled");
    let k: serde_json::Value =
        serde_json::from_str(&dev.ok(&["kernel", "show", "k1", "--json"])).unwrap();
    assert_eq!(k["source"], format!("pull:{base}/k1.tar.gz"));
    dev.ok(&["vm", "delete", "pulled"]);

    // `banger image pull NAME` takes the catalog first: a finished bundle, registered as it
    // is, so flags that would build an image are refused before anything is fetched.
    let out = dev.run(&[
        "image", "pull", "team-img", "--name", "copy", "--size", "4G",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--size does not apply"), "{err}");
    assert!(dev.run(&["image", "show", "copy"]).status.code() != Some(0));
    let out = dev.run(&["image", "pull", "team-img", "--name", "team-copy"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("pull image"), "{err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("pulled image team-copy "),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let img: serde_json::Value =
        serde_json::from_str(&dev.ok(&["image", "show", "team-copy", "--json"])).unwrap();
    assert_eq!(img["kernel_ref"], "k1", "{img}");
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn a_catalog_of_an_unknown_version_is_an_error_naming_it() {
    let home = Home::new();
    let doc = home.path().join("cat.json");
    std::fs::create_dir_all(home.path().join("config")).unwrap();
    std::fs::write(&doc, r#"{"version": 9, "images": []}"#).unwrap();
    std::fs::write(
        home.path().join("config/config.toml"),
        format!("catalogs = [{:?}]\n", doc.display().to_string()),
    )
    .unwrap();
    let out = home.run(&["image", "list", "--available"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&doc.display().to_string()) && err.contains("version 9 is not supported"),
        "{err}"
    );
    let out = home.run(&["kernel", "pull", "k1"]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("version 9"), "{err}");
}
