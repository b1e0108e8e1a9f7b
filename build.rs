//! Records the git commit of the build for `--version` and `/__version__`.
/// `SYNCSTORE_COMMIT` in the build environment wins (container builds have no .git).
fn main() {
    let commit = std::env::var("SYNCSTORE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SYNCSTORE_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=SYNCSTORE_COMMIT");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
}

fn git_commit() -> Option<String> {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}
