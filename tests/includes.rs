//! Config at appliance scale: `include = ["conf.d/*.toml"]`, `lb diff`, and the change summary
//! a reload answers with.

mod common;

use std::path::Path;

use common::*;

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("dir");
    }
    std::fs::write(path, text).expect("write");
}

const MAIN: &str = "include = [\"conf.d/*.toml\"]\n\
    [[listeners]]\naddr = \"127.0.0.1:0\"\n\
    [admin]\naddr = \"127.0.0.1:0\"\n\
    [[clusters]]\nname = \"main\"\nendpoints = [{ addr = \"127.0.0.1:9001\" }]\n\
    [[routes]]\nname = \"main\"\npath_prefix = \"/main\"\ncluster = \"main\"\n";

#[test]
fn included_files_merge_in_name_order() {
    let dir = scratch_dir("include");
    write(&dir, "lb.toml", MAIN);
    write(
        &dir,
        "conf.d/20-orders.toml",
        "[[clusters]]\nname = \"orders\"\nendpoints = [{ addr = \"127.0.0.1:9002\" }]\n\
         [[routes]]\nname = \"orders\"\npath_prefix = \"/orders\"\ncluster = \"orders\"\n",
    );
    write(
        &dir,
        "conf.d/10-users.toml",
        "[[clusters]]\nname = \"users\"\nendpoints = [{ addr = \"127.0.0.1:9003\" }]\n\
         [[routes]]\nname = \"users\"\npath_prefix = \"/users\"\ncluster = \"users\"\n\
         [[consumers]]\nname = \"team-a\"\nkey_sha256 = \"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\"\n",
    );
    // Not matched by the pattern: ignored.
    write(&dir, "conf.d/notes.txt", "not toml");
    write(&dir, "conf.d/.30-draft.toml", "[[routes]]\nbogus = 1\n");
    let (code, out) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("3 clusters, 3 routes"), "{out}");

    // The merged routes are in order: main first, then 10-users, then 20-orders.
    let (code, out) = lb_in(
        &[
            "explain",
            "--config",
            "lb.toml",
            "GET",
            "http://x.example/orders/1",
        ],
        &dir,
    );
    assert_eq!(code, Some(0), "{out}");
    let order: Vec<&str> = ["[0] main", "[1] users", "[2] orders"]
        .into_iter()
        .filter(|r| out.contains(r))
        .collect();
    assert_eq!(order.len(), 3, "{out}");
    assert!(out.contains("cluster: orders"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn include_errors_name_the_file_and_the_key() {
    let dir = scratch_dir("include-errors");
    write(&dir, "lb.toml", MAIN);
    // A bad key in the second entry of an included file.
    write(
        &dir,
        "conf.d/a.toml",
        "[[routes]]\nname = \"ok\"\ncluster = \"main\"\n\
         [[routes]]\nname = \"bad\"\ncluster = \"nowhere\"\n",
    );
    let (code, out) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("conf.d/a.toml: routes[1].cluster"),
        "the file and the key path in it: {out}"
    );

    // A name defined in two files: both places.
    write(
        &dir,
        "conf.d/a.toml",
        "[[clusters]]\nname = \"main\"\nendpoints = [{ addr = \"127.0.0.1:9009\" }]\n",
    );
    let (code, out) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("conf.d/a.toml: clusters[0].name")
            && out.contains("defined twice")
            && out.contains("clusters[0] in the main file"),
        "{out}"
    );

    // Anything but routes, clusters and consumers belongs in the main file.
    write(&dir, "conf.d/a.toml", "[http]\nmax_headers = 10\n");
    let (code, out) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("conf.d/a.toml: http") && out.contains("main file"),
        "{out}"
    );

    // Not TOML: the file and the line.
    write(&dir, "conf.d/a.toml", "[[routes]]\nname = \n");
    let (code, out) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("conf.d/a.toml") && out.contains("line 2"),
        "{out}"
    );

    // An unknown key in an included entry.
    write(
        &dir,
        "conf.d/a.toml",
        "[[routes]]\ncluster = \"main\"\nbogus = 1\n",
    );
    let (code, out) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("conf.d/a.toml") && out.contains("bogus"),
        "{out}"
    );

    // A named file that is missing; a wildcard in a directory.
    write(
        &dir,
        "lb.toml",
        &MAIN.replace("conf.d/*.toml", "extra.toml"),
    );
    let (code, out) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("include[0]") && out.contains("does not exist"),
        "{out}"
    );
    write(&dir, "lb.toml", &MAIN.replace("conf.d/*.toml", "*/x.toml"));
    let (code, out) = lb_in(&["check", "--config", "lb.toml"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("file name only"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn diff_shows_what_a_reload_would_change() {
    let dir = scratch_dir("diff");
    let old = "[[listeners]]\naddr = \"127.0.0.1:8080\"\n\
        [[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:9001\" }, { addr = \"127.0.0.1:9002\" }]\n\
        [[clusters]]\nname = \"gone\"\nendpoints = [{ addr = \"127.0.0.1:9005\" }]\n\
        [[routes]]\nname = \"same\"\npath_prefix = \"/same\"\ncluster = \"a\"\n\
        [[routes]]\nname = \"edited\"\npath_prefix = \"/e\"\ncluster = \"a\"\n\
        [[routes]]\nname = \"removed\"\npath_prefix = \"/r\"\ncluster = \"gone\"\n";
    let new = "[[listeners]]\naddr = \"127.0.0.1:8080\"\n[http]\nmax_headers = 50\n\
        [[clusters]]\nname = \"a\"\nendpoints = [{ addr = \"127.0.0.1:9001\" }, { addr = \"127.0.0.1:9003\" }]\n\
        [[clusters]]\nname = \"new\"\nendpoints = [{ addr = \"127.0.0.1:9006\" }]\n\
        [[routes]]\nname = \"same\"\npath_prefix = \"/same\"\ncluster = \"a\"\n\
        [[routes]]\nname = \"edited\"\npath_prefix = \"/e2\"\ncluster = \"a\"\n\
        [[routes]]\nname = \"added\"\npath_prefix = \"/n\"\ncluster = \"new\"\n";
    write(&dir, "old.toml", old);
    write(&dir, "new.toml", new);
    let (code, out) = lb_in(&["diff", "old.toml", "new.toml"], &dir);
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "+ route added",
        "- route removed",
        "~ route edited",
        "+ cluster new",
        "- cluster gone",
        "~ cluster a",
        "+ endpoint 127.0.0.1:9003 in cluster a",
        "- endpoint 127.0.0.1:9002 in cluster a",
        "~ [http]",
        "a reload applies all of it",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(!out.contains("route same"), "{out}");

    // As JSON; and a listener move needs a restart (exit 3).
    write(
        &dir,
        "new.toml",
        &new.replace("127.0.0.1:8080", "127.0.0.1:8081"),
    );
    let (code, out) = lb_in(&["diff", "--json", "old.toml", "new.toml"], &dir);
    assert_eq!(code, Some(3), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["routes"]["added"], serde_json::json!(["added"]));
    assert!(
        v["needs_restart"][0]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("listeners")),
        "{v}"
    );
    // The same config: nothing.
    let (code, out) = lb_in(&["diff", "old.toml", "old.toml"], &dir);
    assert_eq!((code, out.trim()), (Some(0), "no changes"));
    // An invalid side: its errors, exit 1.
    write(&dir, "new.toml", "[[routes]]\nbogus = 1\n");
    let (code, out) = lb_in(&["diff", "old.toml", "new.toml"], &dir);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("bogus"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn main_with(a: std::net::SocketAddr, watch: &str) -> String {
    format!(
        "include = [\"conf.d/*.toml\"]\n[server]\nworkers = 1\n{watch}\n\
         [[listeners]]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
         [[clusters]]\nname = \"a\"\nendpoints = [{{ addr = \"{a}\" }}]\n\
         [[routes]]\nname = \"a\"\npath_prefix = \"/a\"\ncluster = \"a\"\n"
    )
}

fn b_file(b: std::net::SocketAddr, prefix: &str) -> String {
    format!(
        "[[clusters]]\nname = \"b\"\nendpoints = [{{ addr = \"{b}\" }}]\n\
         [[routes]]\nname = \"b\"\npath_prefix = \"{prefix}\"\ncluster = \"b\"\n"
    )
}

/// A reload takes files added to and changed in `conf.d`, and answers with what it changed;
/// an error in an included file is refused with the file's name.
#[test]
fn a_reload_takes_conf_d_and_says_what_changed() {
    let a = Backend::start(echo("a")).expect("backend");
    let b = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&main_with(a.addr, ""));
    assert_eq!(get(lb.addr, "/b").status, 404);
    write(&lb.dir, "conf.d/b.toml", &b_file(b.addr, "/b"));
    let (status, v) = lb.admin("POST", "/reload");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["changes"]["routes"]["added"],
        serde_json::json!(["b"]),
        "{v}"
    );
    assert_eq!(
        v["changes"]["clusters"]["added"],
        serde_json::json!(["b"]),
        "{v}"
    );
    assert_eq!(
        v["changes"]["routes"]["changed"],
        serde_json::json!([]),
        "{v}"
    );
    assert_eq!(get(lb.addr, "/b").status, 200);

    write(&lb.dir, "conf.d/b.toml", &b_file(b.addr, "/bee"));
    let (status, v) = lb.admin("POST", "/reload");
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["changes"]["routes"]["changed"],
        serde_json::json!(["b"]),
        "{v}"
    );
    assert_eq!(
        v["changes"]["clusters"]["changed"],
        serde_json::json!([]),
        "{v}"
    );
    assert_eq!(get(lb.addr, "/bee").status, 200);

    write(
        &lb.dir,
        "conf.d/b.toml",
        "[[routes]]\nname = \"b\"\ncluster = \"missing\"\n",
    );
    let (status, v) = lb.admin("POST", "/reload");
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["errors"][0]["file"], "conf.d/b.toml", "{v}");
    assert_eq!(v["errors"][0]["path"], "routes[0].cluster", "{v}");
    assert_eq!(get(lb.addr, "/bee").status, 200, "the running config stays");
}

/// The file watch sees a file added to `conf.d`, not only edits of the main file.
#[test]
fn the_file_watch_sees_a_new_file_in_conf_d() {
    let a = Backend::start(echo("a")).expect("backend");
    let b = Backend::start(echo("b")).expect("backend");
    let lb = Lb::start(&main_with(a.addr, "watch_config = \"100ms\""));
    assert_eq!(get(lb.addr, "/b").status, 404);
    write(&lb.dir, "conf.d/b.toml", &b_file(b.addr, "/b"));
    wait_until("the watch to reload the new file", || {
        get(lb.addr, "/b").status == 200
    });
}
