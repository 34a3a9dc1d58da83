//! Container images without a Docker daemon: the final stage of each `Dockerfile` target is
//! assembled with `umoci` (Debian package, installed by `scripts/test.sh`) into an OCI image
//! layout from the binary cargo built here, and the image's config is read back from the layout.
//!
//! The build stage itself (a Rust toolchain image) cannot run here: pulling base images needs a
//! registry other than the package registries. What is tested is what the runtime stage decides:
//! where the binary lands, the user it runs as, and how it is started.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::Value;

/// Bound on each umoci step (repacking a 150 MB debug binary takes a few seconds).
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The runtime stage of one Dockerfile target, as far as the image config is concerned.
#[derive(Debug, Default)]
struct Stage {
    from: String,
    /// `COPY --from=build <src> <dest>`: (source, destination).
    copies: Vec<(String, String)>,
    user: Option<String>,
    cmd: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    labels: BTreeMap<String, String>,
}

/// Instructions of a Dockerfile with continuation lines joined and comments dropped.
fn instructions(dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(trimmed);
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// `["/daprd", "x"]` (exec form) → its strings.
fn exec_form(args: &str) -> anyhow::Result<Vec<String>> {
    serde_json::from_str(args).with_context(|| format!("not an exec-form JSON array: {args}"))
}

/// `k="v" k2="v 2"` → pairs (the quoting this Dockerfile uses).
fn labels(args: &str, into: &mut BTreeMap<String, String>) -> anyhow::Result<()> {
    let mut rest = args.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=').context("LABEL without =")?;
        let after = after.strip_prefix('"').context("LABEL value not quoted")?;
        let (value, after) = after.split_once('"').context("unterminated LABEL value")?;
        into.insert(key.trim().to_owned(), value.to_owned());
        rest = after.trim();
    }
    Ok(())
}

/// The stage `FROM ... AS <target>` of the repository's Dockerfile.
fn stage(target: &str) -> anyhow::Result<Stage> {
    let path = repo().join("Dockerfile");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut found: Option<Stage> = None;
    for instruction in instructions(&text) {
        let (op, args) = instruction
            .split_once(' ')
            .map(|(o, a)| (o.to_ascii_uppercase(), a.trim().to_owned()))
            .unwrap_or_else(|| (instruction.to_ascii_uppercase(), String::new()));
        if op == "FROM" {
            if found.is_some() {
                break;
            }
            let words: Vec<&str> = args.split_whitespace().collect();
            if let [image, as_kw, name] = words[..]
                && as_kw.eq_ignore_ascii_case("as")
                && name == target
            {
                found = Some(Stage {
                    from: image.to_owned(),
                    ..Stage::default()
                });
            }
            continue;
        }
        let Some(stage) = found.as_mut() else {
            continue;
        };
        match op.as_str() {
            "COPY" => {
                let words: Vec<&str> = args.split_whitespace().collect();
                if let [from, src, dest] = words[..]
                    && from.starts_with("--from=")
                {
                    stage.copies.push((src.to_owned(), dest.to_owned()));
                } else {
                    bail!("stage {target}: COPY form not understood: {args}");
                }
            }
            "USER" => stage.user = Some(args),
            "CMD" => stage.cmd = Some(exec_form(&args)?),
            "ENTRYPOINT" => stage.entrypoint = Some(exec_form(&args)?),
            "LABEL" => labels(&args, &mut stage.labels)?,
            other => bail!("stage {target}: instruction {other} not understood by this test"),
        }
    }
    found.with_context(|| format!("Dockerfile has no stage `AS {target}`"))
}

fn umoci() -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join("umoci");
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("umoci is not installed: run `bash scripts/test.sh` (it installs the Debian package)")
}

async fn run(program: &Path, args: &[String]) -> anyhow::Result<()> {
    let what = format!("{} {}", program.display(), args.join(" "));
    let out = tokio::time::timeout(
        STEP_TIMEOUT,
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("`{what}` did not finish within {STEP_TIMEOUT:?}"))?
    .with_context(|| format!("running `{what}`"))?;
    ensure!(
        out.status.success(),
        "`{what}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// A blob of an OCI layout by digest (`sha256:<hex>`).
fn blob(layout: &Path, digest: &Value) -> anyhow::Result<Value> {
    let digest = digest.as_str().context("digest is not a string")?;
    let (algorithm, hex) = digest.split_once(':').context("malformed digest")?;
    read_json(&layout.join("blobs").join(algorithm).join(hex))
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dapr-image-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Assembles the `target` stage's image from the locally built binary: an empty image, the
/// binary copied to the stage's destination, then the stage's user, command and labels.
async fn assemble(target: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let umoci = umoci()?;
    let stage = stage(target)?;
    let binary = e2e::sidecar::binary(target);
    ensure!(
        binary.exists(),
        "{} does not exist: run `cargo build --workspace --bins` (scripts/test.sh does)",
        binary.display()
    );
    let layout = dir.join("oci");
    let image = format!("{}:{target}", layout.display());
    let bundle = dir.join("bundle");
    run(
        &umoci,
        &[
            "init".into(),
            "--layout".into(),
            layout.display().to_string(),
        ],
    )
    .await?;
    run(&umoci, &["new".into(), "--image".into(), image.clone()]).await?;
    run(
        &umoci,
        &[
            "unpack".into(),
            "--image".into(),
            image.clone(),
            bundle.display().to_string(),
        ],
    )
    .await?;
    ensure!(
        stage.copies.len() == 1,
        "stage {target} copies {:?}",
        stage.copies
    );
    let (source, dest) = &stage.copies[0];
    ensure!(
        source.rsplit('/').next() == Some(target),
        "stage {target} copies {source}, not the {target} binary"
    );
    let in_rootfs = bundle.join("rootfs").join(dest.trim_start_matches('/'));
    std::fs::copy(&binary, &in_rootfs)
        .with_context(|| format!("copying {} into the image", binary.display()))?;
    run(
        &umoci,
        &[
            "repack".into(),
            "--image".into(),
            image.clone(),
            bundle.display().to_string(),
        ],
    )
    .await?;
    let mut config = vec!["config".into(), "--image".into(), image.clone()];
    if let Some(user) = &stage.user {
        config.extend(["--config.user".into(), user.clone()]);
    }
    match &stage.entrypoint {
        Some(entrypoint) => {
            for arg in entrypoint {
                config.extend(["--config.entrypoint".into(), arg.clone()]);
            }
        }
        None => config.push("--clear=config.entrypoint".into()),
    }
    for arg in stage.cmd.iter().flatten() {
        config.extend(["--config.cmd".into(), arg.clone()]);
    }
    for (key, value) in &stage.labels {
        config.extend(["--config.label".into(), format!("{key}={value}")]);
    }
    run(&umoci, &config).await?;
    Ok(layout)
}

#[tokio::test]
async fn the_daprd_image_assembled_without_a_daemon_runs_daprd_as_a_non_root_user()
-> anyhow::Result<()> {
    let dir = Scratch::new("daprd")?;
    let layout = assemble("daprd", &dir.0).await?;

    // index.json → manifest → config, as a registry or a runtime reads them.
    let index = read_json(&layout.join("index.json"))?;
    let manifest_ref = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter()
                .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "daprd")
        })
        .context("index.json has no daprd image")?;
    let manifest = blob(&layout, &manifest_ref["digest"])?;
    ensure!(
        manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json",
        "{manifest}"
    );
    ensure!(
        manifest["layers"].as_array().is_some_and(|l| l.len() == 1),
        "one layer expected: {manifest}"
    );
    let image = blob(&layout, &manifest["config"]["digest"])?;
    let config = &image["config"];

    let user = config["User"].as_str().context("image has no User")?;
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap_or_default()
        .parse()
        .with_context(|| format!("User {user:?} is not numeric: runAsNonRoot cannot verify it"))?;
    ensure!(uid != 0, "the image runs as root ({user})");
    ensure!(
        config["Entrypoint"].as_array().is_none_or(|e| e.is_empty()),
        "an ENTRYPOINT would run `/daprd /daprd --flags` with the injector's args: {}",
        config["Entrypoint"]
    );
    ensure!(
        config["Cmd"] == serde_json::json!(["/daprd"]),
        "Cmd {}",
        config["Cmd"]
    );
    ensure!(
        config["Labels"]["org.opencontainers.image.title"] == "daprd",
        "labels {}",
        config["Labels"]
    );
    ensure!(image["os"] == "linux", "os {}", image["os"]);

    // Unpacked as a runtime would: the process is /daprd as that user, and the file is there.
    let umoci = umoci()?;
    let bundle = dir.0.join("check");
    run(
        &umoci,
        &[
            "unpack".into(),
            "--image".into(),
            format!("{}:daprd", layout.display()),
            bundle.display().to_string(),
        ],
    )
    .await?;
    let runtime = read_json(&bundle.join("config.json"))?;
    ensure!(
        runtime["process"]["user"]["uid"] == uid,
        "{}",
        runtime["process"]["user"]
    );
    ensure!(
        runtime["process"]["args"] == serde_json::json!(["/daprd"]),
        "{}",
        runtime["process"]["args"]
    );
    let file = bundle.join("rootfs/daprd");
    let meta = std::fs::metadata(&file).with_context(|| format!("{} missing", file.display()))?;
    use std::os::unix::fs::PermissionsExt;
    ensure!(
        meta.permissions().mode() & 0o111 != 0,
        "/daprd is not executable"
    );
    ensure!(
        meta.len() == std::fs::metadata(e2e::sidecar::binary("daprd"))?.len(),
        "/daprd is not the binary cargo built"
    );
    Ok(())
}

#[test]
fn every_image_runs_non_root_from_distroless_and_the_chart_starts_it_at_its_path()
-> anyhow::Result<()> {
    let chart = std::fs::read_to_string(repo().join("charts/dapr/templates/sentry.yaml"))?
        + &std::fs::read_to_string(repo().join("charts/dapr/templates/injector.yaml"))?;
    for target in ["daprd", "sentry", "injector"] {
        let stage = stage(target)?;
        ensure!(
            stage
                .from
                .starts_with("gcr.io/distroless/cc-debian12:nonroot"),
            "{target} runs on {}",
            stage.from
        );
        let path = format!("/{target}");
        ensure!(
            stage.copies == [(format!("/out/{target}"), path.clone())],
            "{target} copies {:?}",
            stage.copies
        );
        ensure!(
            stage.user.as_deref() == Some("65532:65532"),
            "{target} user {:?}",
            stage.user
        );
        ensure!(stage.entrypoint.is_none(), "{target} has an ENTRYPOINT");
        ensure!(
            stage.cmd.as_deref() == Some(&[path.clone()][..]),
            "{target} cmd {:?}",
            stage.cmd
        );
        if target != "daprd" {
            // The chart's `command` for the control plane is the image's binary path.
            ensure!(
                chart.contains(&format!("command: [\"{path}\"]")),
                "the chart does not start {path}"
            );
        }
    }
    Ok(())
}

/// The build stage builds with scripts/build-release.sh, and the profile that script hands rustc
/// (`daprd/pgo.profdata`, written by bench/pgo.sh) is one this toolchain's LLVM reads. rustc
/// only warns about a profile it cannot read (one written by a newer llvm-profdata than its
/// LLVM, or a file cut short) and builds without it, so the images would lose the profile
/// unnoticed.
#[test]
fn the_build_stage_uses_a_profile_this_toolchain_reads() -> anyhow::Result<()> {
    let dockerfile = std::fs::read_to_string(repo().join("Dockerfile"))?;
    ensure!(
        instructions(&dockerfile)
            .iter()
            .any(|i| i.starts_with("RUN ") && i.contains("bash scripts/build-release.sh")),
        "the Dockerfile does not build with scripts/build-release.sh"
    );
    let script = std::fs::read_to_string(repo().join("scripts/build-release.sh"))?;
    ensure!(
        script.contains("daprd/pgo.profdata") && script.contains("-Cprofile-use="),
        "scripts/build-release.sh does not use daprd/pgo.profdata"
    );
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("lib.rs");
    std::fs::write(&source, "pub fn add(a: u64, b: u64) -> u64 { a ^ b }\n")?;
    let compile = |profile: &Path| {
        std::process::Command::new("rustc")
            .args(["--crate-type=lib", "-Copt-level=3", "--emit=obj", "-o"])
            .arg(dir.path().join("lib.o"))
            .arg(format!("-Cprofile-use={}", profile.display()))
            .arg(&source)
            .output()
            .context("running rustc")
    };
    let read = compile(&repo().join("daprd/pgo.profdata"))?;
    ensure!(
        read.status.success() && read.stderr.is_empty(),
        "rustc does not read daprd/pgo.profdata cleanly (regenerate it with bench/pgo.sh): {}",
        String::from_utf8_lossy(&read.stderr)
    );
    // The same compile warns about a profile cut short, so the check above can fail.
    let profile = std::fs::read(repo().join("daprd/pgo.profdata"))?;
    let cut = dir.path().join("cut.profdata");
    std::fs::write(&cut, &profile[..profile.len() / 2])?;
    let warned = compile(&cut)?;
    ensure!(
        String::from_utf8_lossy(&warned.stderr).contains("profile data"),
        "rustc read a profile cut in half without a warning: {}",
        String::from_utf8_lossy(&warned.stderr)
    );
    Ok(())
}
