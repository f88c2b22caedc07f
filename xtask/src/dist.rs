//! `cargo xtask dist`: the release, in `target/dist/`.
//!
//! 1. the first-party plugins and the web UI (`cargo xtask plugins`, `ui`);
//! 2. `cargo build --release` of `viaduct-server`, `viaduct-runner` and
//!    `viaduct-autoscaler`, embedding both (`VIADUCT_EMBED_UI`,
//!    `VIADUCT_EMBED_PLUGINS`: see `bundle/`), so the server alone serves
//!    everything; and `--profile cli` of `viaduct` (the CLI, whole-program
//!    optimised and, on glibc, statically linked; it embeds nothing);
//! 3. `viaduct-<version>-<arch>-linux.tar.gz`: `bin/` (debug info stripped,
//!    symbols kept), `lib/systemd/system/` (the units of `deploy/systemd/`),
//!    README.md (and LICENSE files when there are any); entries sorted,
//!    owned by root, dated from the last commit, so the same inputs make
//!    the same archive;
//! 4. unless `--no-image`: the OCI image `localhost/viaduct:<version>`,
//!    imported with Podman from a root file system made here of the same
//!    binaries, the libraries they link, busybox (a shell: the server's git
//!    hooks are scripts), git (for `git http-backend`) and the system's CA
//!    certificates — nothing is pulled, so it builds without network — and
//!    saved as `viaduct-<version>-oci.tar` (`podman save --format
//!    oci-archive`);
//! 5. `SHA256SUMS` of what it wrote (`sha256sum -c SHA256SUMS`).

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run, target_dir};

/// The binaries of a release (`viaduct` is the CLI of `viaduct-sdk`).
pub const BINARIES: [&str; 4] = ["viaduct-server", "viaduct-runner", "viaduct", "viaduct-autoscaler"];

/// Builds the release's binaries: the CLI with its own profile
/// ([`crate::CLI_PROFILE`]; statically linked on a `*-linux-gnu` host, in
/// `target/<host>/cli/`), the others with `--release`; `envs` are set
/// for both builds. Returns where each binary is, by name.
pub fn build_binaries(envs: &[(&str, PathBuf)]) -> Result<Vec<(&'static str, PathBuf)>> {
    let mut build = cargo();
    build.args(["build", "--release", "--locked"]).envs(envs.iter().map(|(k, v)| (*k, v)));
    for bin in BINARIES.into_iter().filter(|b| *b != "viaduct") {
        build.args(["--bin", bin]);
    }
    run(&mut build)?;
    let mut cli = cargo();
    cli.args(["build", "--profile", crate::CLI_PROFILE, "--locked", "--bin", "viaduct"]);
    let host = host_triple()?;
    // Statically linked (glibc's static-pie): no dynamic loader to run nor
    // shared libraries to map at each command's start (~0.3 ms of every
    // command: docs/scaling.md), and it runs whatever the host's glibc.
    // Built for the host named as the target, so that the flag reaches
    // only the CLI's own code, not the build scripts and proc-macros cargo
    // builds for the host.
    let linked_statically = host.ends_with("-linux-gnu");
    let cli_dir = if linked_statically {
        let flags = format!("CARGO_TARGET_{}_RUSTFLAGS", host.to_uppercase().replace(['-', '.'], "_"));
        cli.args(["--target", &host]).env(flags, "-C target-feature=+crt-static");
        target_dir().join(&host).join(crate::CLI_PROFILE)
    } else {
        target_dir().join(crate::CLI_PROFILE)
    };
    run(cli.envs(envs.iter().map(|(k, v)| (*k, v))))?;
    let built: Vec<_> = BINARIES
        .into_iter()
        .map(|bin| {
            let dir = if bin == "viaduct" { cli_dir.clone() } else { target_dir().join("release") };
            (bin, dir.join(bin))
        })
        .collect();
    // The CLI is built alone (its dependencies' features unified without
    // the server's): it must still start.
    let cli = &built.iter().find(|(bin, _)| *bin == "viaduct").context("the CLI")?.1;
    run(Command::new(cli).arg("--version").stdout(std::process::Stdio::null()))?;
    if linked_statically && names_interpreter(cli)? {
        bail!(
            "{} names a dynamic loader, though built to be static: RUSTFLAGS or CARGO_ENCODED_RUSTFLAGS, \
             when set, replace the target's flags — unset them to build a release",
            cli.display()
        );
    }
    Ok(built)
}

/// Whether the executable at `path` names a program interpreter (an ELF
/// `PT_INTERP` program header: it is linked dynamically). 64-bit
/// little-endian ELF only: the hosts whose CLI is linked statically.
fn names_interpreter(path: &Path) -> Result<bool> {
    use std::io::Read as _;
    const PT_INTERP: u32 = 3;
    let mut head = Vec::new();
    std::fs::File::open(path)?.take(64 << 10).read_to_end(&mut head)?;
    let at = |o: usize, n: usize| {
        o.checked_add(n)
            .and_then(|end| head.get(o..end))
            .with_context(|| format!("{}: a short ELF header", path.display()))
    };
    if at(0, 6)? != b"\x7fELF\x02\x01" {
        bail!("{}: not a 64-bit little-endian ELF file", path.display());
    }
    let word = |o: usize| -> Result<usize> { Ok(u16::from_le_bytes(at(o, 2)?.try_into()?).into()) };
    let offset = usize::try_from(u64::from_le_bytes(at(0x20, 8)?.try_into()?))?;
    let (size, count) = (word(0x36)?, word(0x38)?);
    for i in 0..count {
        if u32::from_le_bytes(at(offset.saturating_add(i * size), 4)?.try_into()?) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The target triple of the host (`rustc -vV`).
fn host_triple() -> Result<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
        .context("rustc -vV names no host")
}

/// The systemd units the archive ships (in `lib/systemd/system/`).
const UNITS: [(&str, &str); 2] = [
    ("viaduct-server.service", include_str!("../../deploy/systemd/viaduct-server.service")),
    ("viaduct-runner.service", include_str!("../../deploy/systemd/viaduct-runner.service")),
];

/// The account the image's server runs as.
const IMAGE_UID: u64 = 10001;

/// The variables that make a build embed the UI bundle in `ui` and the
/// first-party plugins (`cargo xtask plugins` built them), for `cargo
/// build` of the binaries (and `cargo test`, which would otherwise rebuild
/// them without).
pub fn embed_env(ui: &Path) -> [(&'static str, PathBuf); 2] {
    [("VIADUCT_EMBED_UI", ui.to_path_buf()), ("VIADUCT_EMBED_PLUGINS", crate::plugins::output_dir(false))]
}

/// The workspace's version.
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `cargo xtask dist`.
pub fn dist(image: bool) -> Result<()> {
    let started = Instant::now();
    let version = version();
    let arch = std::env::consts::ARCH;
    crate::plugins::build(false)?;
    let ui = crate::ui::build()?;
    let built = build_binaries(&embed_env(&ui))?;

    let out = target_dir().join("dist");
    std::fs::create_dir_all(&out)?;
    let work = out.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // Release binaries with their debug info stripped (symbols stay, so
    // panics still name functions).
    let mut bins = Vec::new();
    for (bin, path) in &built {
        let bin = *bin;
        let copy = work.join(bin);
        std::fs::copy(path, &copy).with_context(|| format!("copying {bin}"))?;
        if !Command::new("strip").arg("--strip-debug").arg(&copy).status().is_ok_and(|s| s.success()) {
            eprintln!("xtask: dist: `strip` failed or is missing: {bin} keeps its debug info");
        }
        bins.push((bin, copy));
    }
    let mtime = source_date();

    // The archive.
    let name = format!("viaduct-{version}-{arch}-linux");
    let mut tree = Tree::default();
    for (bin, copy) in &bins {
        tree.file(&format!("{name}/bin/{bin}"), std::fs::read(copy)?, 0o755);
    }
    for (unit, text) in UNITS {
        tree.file(&format!("{name}/lib/systemd/system/{unit}"), text.as_bytes().to_vec(), 0o644);
    }
    tree.file(&format!("{name}/README.md"), std::fs::read(root().join("README.md"))?, 0o644);
    for license in licenses()? {
        let file = license.file_name().and_then(|n| n.to_str()).context("a license file's name")?.to_string();
        tree.file(&format!("{name}/{file}"), std::fs::read(&license)?, 0o644);
    }
    let archive = out.join(format!("{name}.tar.gz"));
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(&archive)?, flate2::Compression::best());
    tree.write(gz, mtime)?.finish()?;
    let mut written = vec![archive.clone()];
    eprintln!("xtask: dist: {} ({})", archive.display(), mib(std::fs::metadata(&archive)?.len()));

    if image {
        let oci = out.join(format!("viaduct-{version}-oci.tar"));
        let size = build_image(&bins, &work, &oci, mtime)?;
        eprintln!("xtask: dist: image localhost/viaduct:{version} ({}), saved as {}", mib(size), oci.display());
        written.push(oci);
    } else {
        eprintln!("xtask: dist: no image (--no-image)");
    }

    let mut sums = String::new();
    for file in &written {
        let digest = sha256_file(file)?;
        let file_name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        sums.push_str(&format!("{digest}  {file_name}\n"));
    }
    std::fs::write(out.join("SHA256SUMS"), &sums)?;
    let _ = std::fs::remove_dir_all(&work);
    print!("{sums}");
    eprintln!("xtask: dist: done in {:.0?} → {}", started.elapsed(), out.display());
    Ok(())
}

/// LICENSE, LICENSE-MIT, COPYING… at the workspace root.
fn licenses() -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(root())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            p.is_file() && (n.starts_with("LICENSE") || n.starts_with("COPYING"))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// `SOURCE_DATE_EPOCH`, else the last commit's time, else 0.
fn source_date() -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|v| v.parse().ok()) {
        return t;
    }
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(root())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest as _;
    let mut hasher = sha2::Sha256::new();
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One entry of a tar archive.
enum Entry {
    Dir { uid: u64, mode: u32 },
    File { bytes: Vec<u8>, mode: u32, uid: u64 },
    Link { target: String },
}

/// Files, directories and symbolic links by path: written sorted, parents
/// first, every parent directory included.
#[derive(Default)]
struct Tree(BTreeMap<String, Entry>);

impl Tree {
    fn parents(&mut self, path: &str) {
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            self.0.entry(path[..at + i].to_string()).or_insert(Entry::Dir { uid: 0, mode: 0o755 });
            at += i + 1;
        }
    }

    fn file(&mut self, path: &str, bytes: Vec<u8>, mode: u32) {
        self.parents(path);
        self.0.insert(path.to_string(), Entry::File { bytes, mode, uid: 0 });
    }

    fn dir(&mut self, path: &str, mode: u32, uid: u64) {
        self.parents(path);
        self.0.insert(path.to_string(), Entry::Dir { uid, mode });
    }

    fn link(&mut self, path: &str, target: &str) {
        self.parents(path);
        self.0.insert(path.to_string(), Entry::Link { target: target.to_string() });
    }

    /// A copy of the host's file `path` (following links) at the same path.
    fn host_file(&mut self, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path)?.permissions()) & 0o755;
        let at = path.to_str().context("a UTF-8 path")?.trim_start_matches('/');
        self.file(at, bytes, mode);
        Ok(())
    }

    fn write<W: std::io::Write>(&self, to: W, mtime: u64) -> Result<W> {
        let mut tar = tar::Builder::new(to);
        for (path, entry) in &self.0 {
            let mut h = tar::Header::new_gnu();
            h.set_mtime(mtime);
            let (uid, mode) = match entry {
                Entry::Dir { uid, mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    (*uid, *mode)
                }
                Entry::File { bytes, mode, uid } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(bytes.len() as u64);
                    (*uid, *mode)
                }
                Entry::Link { .. } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    (0, 0o777)
                }
            };
            h.set_uid(uid);
            h.set_gid(uid);
            h.set_mode(mode);
            match entry {
                Entry::Dir { .. } => tar.append_data(&mut h, format!("{path}/"), std::io::empty())?,
                Entry::File { bytes, .. } => tar.append_data(&mut h, path, bytes.as_slice())?,
                Entry::Link { target } => tar.append_link(&mut h, path, target)?,
            }
        }
        Ok(tar.into_inner()?)
    }
}

/// The shared libraries `program` links (absolute paths, from `ldd`).
fn libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output().context("running ldd")?;
    // A static program: "not a dynamic executable" and a failure status.
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// A program of the host, found on PATH.
fn which(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Builds `localhost/viaduct:<version>` from `bins` and saves it to `oci`;
/// returns the image's size.
fn build_image(bins: &[(&str, PathBuf)], work: &Path, oci: &Path, mtime: u64) -> Result<u64> {
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.args(args);
        c
    };
    if !podman(&["--version"]).output().is_ok_and(|o| o.status.success()) {
        bail!("Podman is needed for the image (`cargo xtask setup` installs it); --no-image skips it");
    }
    let tag = format!("localhost/viaduct:{}", version());
    let mut fs = Tree::default();
    let mut programs: Vec<PathBuf> = Vec::new();
    for (bin, copy) in bins {
        fs.file(&format!("usr/bin/{bin}"), std::fs::read(copy)?, 0o755);
        programs.push(copy.clone());
    }
    // A shell and the usual tools: git hooks are shell scripts, and people
    // debug with them.
    let busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().map(Path::new).find(|p| p.is_file());
    match busybox {
        Some(busybox) => {
            fs.file("bin/busybox", std::fs::read(busybox)?, 0o755);
            programs.push(busybox.to_path_buf());
            let applets = Command::new(busybox).arg("--list").output()?;
            for applet in String::from_utf8_lossy(&applets.stdout).lines() {
                if !applet.is_empty() && applet != "busybox" && !applet.contains('/') {
                    fs.link(&format!("bin/{applet}"), "busybox");
                }
            }
        }
        None => eprintln!("xtask: dist: no busybox here (Debian busybox-static): the image has no shell"),
    }
    // git: the server runs `git http-backend` for hosted repositories. The
    // program at the path it was built for (its exec path is compiled in),
    // and on PATH.
    match which("git") {
        Some(git) => {
            let git = std::fs::canonicalize(git)?;
            fs.file("usr/bin/git", std::fs::read(&git)?, 0o755);
            programs.push(git.clone());
            let exec_path = Command::new(&git).arg("--exec-path").output()?;
            let backend = PathBuf::from(String::from_utf8_lossy(&exec_path.stdout).trim()).join("git-http-backend");
            if backend.is_file() {
                fs.host_file(&backend)?;
                programs.push(backend);
            }
        }
        None => eprintln!("xtask: dist: no git here: the image's server cannot serve hosted repositories over HTTP"),
    }
    for program in &programs {
        for lib in libraries(program)? {
            fs.host_file(&lib)?;
        }
    }
    for certs in ["/etc/ssl/certs/ca-certificates.crt"] {
        match Path::new(certs).is_file() {
            true => fs.host_file(Path::new(certs))?,
            false => eprintln!("xtask: dist: no {certs} here: the image trusts no CA but those it is given"),
        }
    }
    fs.file(
        "etc/passwd",
        format!("root:x:0:0:root:/root:/bin/sh\nviaduct:x:{IMAGE_UID}:{IMAGE_UID}:Viaduct:/var/lib/viaduct:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
            .into_bytes(),
        0o644,
    );
    fs.file("etc/group", format!("root:x:0:\nviaduct:x:{IMAGE_UID}:\nnogroup:x:65534:\n").into_bytes(), 0o644);
    for d in ["proc", "sys", "dev", "root", "etc/viaduct"] {
        fs.dir(d, 0o755, 0);
    }
    fs.dir("tmp", 0o1777, 0);
    fs.dir("var/lib/viaduct", 0o750, IMAGE_UID);

    let rootfs = work.join("rootfs.tar");
    fs.write(std::fs::File::create(&rootfs)?, mtime)?.flush()?;
    let _ = podman(&["rmi", "-f", &tag]).output();
    let changes = [
        "ENV PATH=/usr/bin:/bin".to_string(),
        "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt".into(),
        "ENV VIADUCT_LISTEN=0.0.0.0:7700".into(),
        "ENV VIADUCT_DATA_DIR=/var/lib/viaduct".into(),
        format!("USER {IMAGE_UID}:{IMAGE_UID}"),
        "WORKDIR /var/lib/viaduct".into(),
        "VOLUME /var/lib/viaduct".into(),
        "EXPOSE 7700".into(),
        "ENTRYPOINT [\"/usr/bin/viaduct-server\"]".into(),
        format!("LABEL org.opencontainers.image.title=viaduct org.opencontainers.image.version={}", version()),
    ];
    let mut import = podman(&["import"]);
    for c in &changes {
        import.arg("--change").arg(c);
    }
    import.arg("--message").arg(format!("viaduct {} (cargo xtask dist)", version()));
    run(import.arg(&rootfs).arg(&tag).stdout(std::process::Stdio::null()))?;
    // It starts: the server's own --version, in the image.
    let conf = target_dir().join("tools/podman/containers.conf");
    let mut smoke = podman(&["run", "--rm", "--network", "none", &tag, "--version"]);
    if conf.is_file() {
        smoke.env("CONTAINERS_CONF", &conf);
    }
    match smoke.output() {
        Ok(o) if o.status.success() => {
            eprintln!("xtask: dist: the image runs: {}", String::from_utf8_lossy(&o.stdout).trim());
        }
        Ok(o) => eprintln!(
            "xtask: dist: warning: `podman run {tag} --version` failed here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("xtask: dist: warning: cannot run podman: {e}"),
    }
    let _ = std::fs::remove_file(oci);
    run(podman(&["save", "--format", "oci-archive", "-o"]).arg(oci).arg(&tag))?;
    let size = podman(&["image", "inspect", "--format", "{{.Size}}", &tag]).output()?;
    Ok(String::from_utf8_lossy(&size.stdout).trim().parse().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_sorted_with_parents_and_the_same_every_time() {
        let make = || {
            let mut t = Tree::default();
            t.file("v/bin/b", b"b".to_vec(), 0o755);
            t.file("v/README.md", b"r".to_vec(), 0o644);
            t.link("v/bin/sh", "busybox");
            t.dir("v/var/lib/x", 0o750, 10001);
            t.write(Vec::new(), 1_700_000_000).unwrap()
        };
        let bytes = make();
        assert_eq!(bytes, make());
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u64, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (e.path().unwrap().display().to_string(), h.uid().unwrap(), h.mode().unwrap())
            })
            .collect();
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            ["v/", "v/README.md", "v/bin/", "v/bin/b", "v/bin/sh", "v/var/", "v/var/lib/", "v/var/lib/x/"]
        );
        assert_eq!(entries[3].2, 0o755);
        assert_eq!((entries[7].1, entries[7].2), (10001, 0o750));
    }

    /// The check that the release CLI came out static: this test's own
    /// executable is linked dynamically, busybox-static (`cargo xtask
    /// setup` installs it) statically, and a text file is no ELF.
    #[test]
    fn a_dynamically_linked_executable_names_its_interpreter() {
        assert!(names_interpreter(&std::env::current_exe().unwrap()).unwrap());
        let text = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(text.path(), "#!/bin/sh\n").unwrap();
        assert!(names_interpreter(text.path()).is_err());
        let busybox = Path::new("/bin/busybox");
        if !busybox.is_file() {
            eprintln!("SKIPPED (in part): /bin/busybox is not installed (Debian package busybox-static)");
            return;
        }
        assert!(!names_interpreter(busybox).unwrap());
    }

    /// Both shipped units, with `systemd-analyze verify` when it is here
    /// (the binaries they name replaced by one that exists).
    #[test]
    fn systemd_accepts_the_shipped_units() {
        if which("systemd-analyze").is_none() {
            eprintln!("SKIPPED: systemd-analyze is not installed (Debian package systemd)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in UNITS {
            let settings = text.lines().filter(|l| !l.starts_with('#'));
            assert!(!settings.clone().any(|l| l.contains("--token ") || l.contains("--token=")), "{name}: a token");
            let text = text
                .replace("/usr/bin/viaduct-server", "/bin/true")
                .replace("/usr/bin/viaduct-runner", "/bin/true")
                .replace("EnvironmentFile=/", "EnvironmentFile=-/");
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
            assert!(out.status.success() && ours.is_empty(), "{name}: {}\n{stderr}", out.status);
        }
    }
}
