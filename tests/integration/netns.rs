//! Two machines, as far as the network can tell: the control plane and a subworker in
//! two network namespaces joined by a veth pair that this test creates and deletes
//! itself (addresses from the documentation range 192.0.2.0/24; the namespaces have no
//! other interface and no route out). The workers page's commands run across the link
//! with the cluster key; a peer without the key is refused there too; discovery works.
//!
//! Needs root and `ip` (iproute2). Where namespaces cannot be made the test says so and
//! passes, unless `FASTWORKER_REQUIRE_NETNS=1` (set by `.ci/run`), when it fails.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    procs::{mytasks_dir, Proc, STARTUP},
    support::{run, Output, TestDir},
};

const CP_ADDR: &str = "192.0.2.1";
const SW_ADDR: &str = "192.0.2.2";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Two namespaces and the veth pair between them; deleted when dropped.
struct Link {
    cp: String,
    sw: String,
}

impl Link {
    fn create() -> Result<Link, String> {
        let tag = std::process::id() % 100_000;
        let link = Link {
            cp: format!("fwcp{tag}"),
            sw: format!("fwsw{tag}"),
        };
        let (veth_cp, veth_sw) = (format!("fwc{tag}"), format!("fws{tag}"));
        ip(&["netns", "add", &link.cp])?;
        ip(&["netns", "add", &link.sw])?;
        ip(&[
            "link", "add", &veth_cp, "netns", &link.cp, "type", "veth", "peer", "name", &veth_sw,
            "netns", &link.sw,
        ])?;
        for (ns, dev, addr) in [(&link.cp, &veth_cp, CP_ADDR), (&link.sw, &veth_sw, SW_ADDR)] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(link)
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        let _ = ip(&["netns", "delete", &self.cp]);
        let _ = ip(&["netns", "delete", &self.sw]);
    }
}

/// `fastworker <args>` inside namespace `ns`, set up as `dir.fastworker()` is.
fn in_ns(dir: &TestDir, ns: &str, args: &[&str]) -> Command {
    let base = dir.fastworker();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .arg(base.get_program())
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null());
    for (key, value) in base.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    cmd
}

fn prints_8(out: &Output) -> bool {
    out.status.success() && out.stdout_lines() == ["8"]
}

#[test]
fn control_plane_and_subworker_on_two_hosts_with_the_key() {
    let link = match Link::create() {
        Ok(link) => link,
        Err(why) => {
            assert!(
                std::env::var("FASTWORKER_REQUIRE_NETNS").as_deref() != Ok("1"),
                "FASTWORKER_REQUIRE_NETNS=1 but network namespaces cannot be made here: {why}"
            );
            eprintln!("skipped: network namespaces cannot be made here ({why}); run as root with iproute2, or set FASTWORKER_REQUIRE_NETNS=1 to make this a failure");
            return;
        }
    };
    let dir = mytasks_dir().without_suite_key();
    let mut keygen = dir.fastworker();
    keygen.args(["keygen", "cluster.key"]);
    assert!(run(keygen).status.success());
    let base = format!("tcp://{CP_ADDR}:5555");
    let discovery = format!("tcp://{CP_ADDR}:5550");

    // The control plane serves no task itself: every result below crossed the link
    // twice (to the subworker and back).
    let mut cp_args = crate::procs::control_plane_args(&base, &discovery, "5560");
    cp_args.extend(["--auth-key-file".to_string(), "cluster.key".to_string()]);
    let cp_args: Vec<&str> = cp_args.iter().map(String::as_str).collect();
    let cp_cmd = in_ns(&dir, &link.cp, &cp_args);
    let mut cp = Proc::spawn_command(&dir, "cp", cp_cmd, None);
    cp.wait_for(false, "ready on", STARTUP);
    let sw_cmd = in_ns(
        &dir,
        &link.sw,
        &[
            "subworker",
            "--worker-id",
            "sw1",
            "--control-plane-address",
            &base,
            "--base-address",
            &format!("tcp://{SW_ADDR}:5561"),
            "--task-modules",
            "mytasks",
            "--auth-key-file",
            "cluster.key",
        ],
    );
    let mut sw = Proc::spawn_command(&dir, "sw1", sw_cmd, None);
    sw.wait_for(true, "registered with the control plane", STARTUP);
    cp.wait_for_line(true, &["subworker registered", "worker=sw1 "], STARTUP);

    let submit = |extra: &[&str]| {
        let mut args = vec!["submit", "--task-name", "add", "--args", "5", "3"];
        args.extend_from_slice(extra);
        run(in_ns(&dir, &link.sw, &args))
    };
    let out = submit(&[
        "--control-plane-address",
        &base,
        "--auth-key-file",
        "cluster.key",
    ]);
    assert!(
        prints_8(&out),
        "add 5 3 across the link: {out:?}\n{}",
        cp.describe()
    );
    let out = submit(&[
        "--discovery-address",
        &discovery,
        "--auth-key-file",
        "cluster.key",
    ]);
    assert!(prints_8(&out), "through discovery across the link: {out:?}");
    let out = submit(&[
        "--control-plane-address",
        &base,
        "--auth-key-file",
        "cluster.key",
        "--json",
    ]);
    assert!(out.stdout.contains("\"sw1\""), "run by sw1: {out:?}");

    // Without the key, from the other host: refused, at the base and discovery ports.
    let out = submit(&["--control-plane-address", &base]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("cluster key"), "{out:?}");
    let out = submit(&["--discovery-address", &discovery]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let rogue_cmd = in_ns(
        &dir,
        &link.sw,
        &[
            "subworker",
            "--worker-id",
            "rogue",
            "--control-plane-address",
            &format!("tcp://{CP_ADDR}:5560"),
            "--task-modules",
            "mytasks",
        ],
    );
    let mut rogue = Proc::spawn_command(&dir, "rogue", rogue_cmd, None);
    let status = rogue.wait_exit(Duration::from_secs(20));
    assert!(!status.success(), "{}", rogue.describe());
    assert!(!cp.stderr().contains("worker=rogue "), "{}", cp.stderr());

    assert!(cp.try_exit().is_none() && sw.try_exit().is_none());
    sw.kill();
    cp.kill();
    drop(link);
}
