//! The CI recipes of examples/ci run for real: their shared step scripts are what both the
//! GitHub Actions workflow and the GitLab CI file call, so a broken step fails here first.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::common::{LAB_LOCK, lab_available, require, root};

fn step(script: &str) -> PathBuf {
    root().join("examples/ci/steps").join(script)
}

/// Runs a step script with this build's wgprov, its output directory in `out`.
fn run_step(script: &str, args: &[&str], out: &Path) -> Output {
    Command::new("bash")
        .arg(step(script))
        .args(args)
        .env("WGPROV", env!("CARGO_BIN_EXE_wgprov"))
        .env("OUT", out)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::copy(root().join("inventories").join(name), &p).unwrap();
    (dir, p)
}

#[test]
fn both_recipes_call_the_shared_steps() {
    for recipe in ["github-actions.yml", "gitlab-ci.yml"] {
        let y = std::fs::read_to_string(root().join("examples/ci").join(recipe)).unwrap();
        for s in ["validate-plan.sh", "lab.sh", "apply.sh", "install.sh"] {
            assert!(
                y.contains(&format!("examples/ci/steps/{s}")),
                "{recipe} does not call {s}"
            );
        }
        // parses as YAML
        let _: serde_json::Value =
            serde_saphyr::from_str(&y).unwrap_or_else(|e| panic!("{recipe}: {e}"));
    }
    for s in ["validate-plan.sh", "lab.sh", "apply.sh", "install.sh"] {
        let o = Command::new("bash")
            .arg("-n")
            .arg(step(s))
            .output()
            .unwrap();
        assert!(o.status.success(), "bash -n {s}: {}", text(&o));
    }
}

#[test]
fn validate_plan_step_writes_the_plan_and_annotatable_errors() {
    let (dir, inv) = copy_of("home.yaml");
    let out = dir.path().join("out");
    let o = run_step("validate-plan.sh", &[inv.to_str().unwrap()], &out);
    assert!(o.status.success(), "{}", text(&o));
    let md = std::fs::read_to_string(out.join("plan.md")).unwrap();
    assert!(
        md.contains("site home") && md.starts_with("### wgprov plan"),
        "{md}"
    );
    let _: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();

    // a typo: exit 2 and FILE:LINE:COL: field: message, which the GitHub matcher reads
    let text_in = std::fs::read_to_string(&inv).unwrap();
    std::fs::write(&inv, text_in.replacen("address:", "adress:", 1)).unwrap();
    let o = run_step("validate-plan.sh", &[inv.to_str().unwrap()], &out);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{}:", inv.display())))
        .unwrap_or_else(|| panic!("no FILE:LINE:COL line in {stdout}"));
    let matcher: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("examples/ci/wgprov-matcher.json")).unwrap(),
    )
    .unwrap();
    let re = matcher["problemMatcher"][0]["pattern"][0]["regexp"]
        .as_str()
        .unwrap();
    // the matcher's regexp, checked with grep -P (PCRE reads it like JavaScript here)
    let g = Command::new("grep")
        .args(["-P", re])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(format!("{line}\n").as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(g.status.success(), "the matcher does not match `{line}`");
    let fields: Vec<&str> = line.splitn(4, ':').collect();
    assert!(
        fields[1].parse::<u32>().unwrap() > 0 && fields[2].parse::<u32>().unwrap() > 0,
        "{line}"
    );
}

/// Tears the lab down when dropped, also when the test fails half-way.
struct Down(String);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = wgprov::lab::down(&self.0);
    }
}

#[test]
fn lab_step_proves_the_demo_inventory_and_tears_down() {
    if !lab_available() {
        return;
    }
    let _lock = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (dir, inv) = copy_of("demo.yaml");
    let prefix = format!("ci{}", std::process::id() % 100_000);
    let _down = Down(prefix.clone());
    let out = dir.path().join("out");
    let o = run_step("lab.sh", &[inv.to_str().unwrap(), &prefix], &out);
    let t = text(&o);
    assert!(o.status.success(), "lab.sh failed:\n{t}");
    // the merge step ran in the lab: changes, then nothing to change
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lab-first/apply.json")).unwrap())
            .unwrap();
    assert!(first["summary"]["changed"].as_u64().unwrap() > 0, "{first}");
    assert_eq!(first["summary"]["failed"], 0, "{first}");
    assert!(t.contains("apply.sh: nothing to change on any host"), "{t}");
    assert!(!out.join("lab-second/apply.json").exists());
    assert!(t.contains("pings crossed, 0 failed"), "{t}");
    // torn down: no namespace with the prefix is left
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&ns.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(String::from)
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Runs actionlint (with shellcheck on PATH it also checks every `run:` script) on `file`.
fn actionlint(file: &Path) -> Output {
    Command::new("actionlint")
        .args(["-oneline", "-no-color"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn actionlint_finds_nothing_in_the_github_recipe_and_would_catch_it_aging() {
    if !require("actionlint") || !require("shellcheck") {
        return;
    }
    let recipe = root().join("examples/ci/github-actions.yml");
    let o = actionlint(&recipe);
    assert!(
        o.status.success() && o.stdout.is_empty(),
        "actionlint on {}:\n{}",
        recipe.display(),
        text(&o)
    );
    // The lint is what keeps the recipe from ageing: the same recipe on the actions' node20
    // majors (retired by GitHub) fails it, and so does a `run:` script shellcheck objects to.
    let y = std::fs::read_to_string(&recipe).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.yml");
    let node20 = y
        .replace("actions/checkout@v7", "actions/checkout@v4")
        .replace("actions/upload-artifact@v7", "actions/upload-artifact@v4");
    assert_ne!(
        node20, y,
        "the recipe no longer uses checkout@v7 / upload-artifact@v7"
    );
    std::fs::write(&old, node20).unwrap();
    let o = actionlint(&old);
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("node20")
            && t.contains("actions/checkout@v4")
            && t.contains("actions/upload-artifact@v4"),
        "{t}"
    );
    let unquoted = dir.path().join("unquoted.yml");
    std::fs::write(
        &unquoted,
        y.replacen(
            "run: examples/ci/steps/validate-plan.sh \"$INVENTORY\"",
            "run: examples/ci/steps/validate-plan.sh $INVENTORY",
            1,
        ),
    )
    .unwrap();
    let t = text(&actionlint(&unquoted));
    assert!(
        t.contains("SC2086"),
        "shellcheck did not run on `run:` scripts: {t}"
    );
}

#[test]
fn the_step_scripts_pass_shellcheck() {
    if !require("shellcheck") {
        return;
    }
    let steps: Vec<PathBuf> = std::fs::read_dir(root().join("examples/ci/steps"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sh"))
        .collect();
    assert!(steps.len() >= 4, "{steps:?}");
    let o = Command::new("shellcheck").args(&steps).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
}
