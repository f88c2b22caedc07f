//! Which kinds of project a directory tree holds, from the names of the
//! files in it (never their contents, so detection is cheap and safe on any
//! workspace).
//!
//! [`scan`] lists the files of the root and of subdirectories down to a
//! depth; [`detect_files`] turns such a list into [`Detection`]s — one per
//! [`ProjectType`] found, with a confidence in `0.0..=1.0`, the evidence
//! (the marker files), the directory the project lives in and details such
//! as the package manager.
//!
//! **Confidence.** Every marker file has a weight (a `Cargo.toml` is strong
//! evidence of a Rust project, a `rust-toolchain` file alone much weaker),
//! scaled down for markers below the root (×0.8 one level down, ×0.65
//! deeper). A type's confidence is the chance that at least one marker is
//! right, taking them as independent: `1 − Π(1 − wᵢ)`, rounded to two
//! decimals. So `Cargo.toml` alone gives 0.9, with `Cargo.lock` 0.96, and a
//! `Cargo.toml` one level down 0.72.

use std::{collections::BTreeMap, fmt, io, path::Path};

/// A kind of project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProjectType {
    /// Rust (Cargo).
    Rust,
    /// JavaScript/TypeScript with a `package.json` (npm, yarn, pnpm, bun).
    Node,
    /// Python (pip, uv, poetry, pdm, pipenv).
    Python,
    /// Go modules.
    Go,
    /// Nix (a flake, or classic `default.nix`/`shell.nix`).
    Nix,
    /// Container images (Dockerfile, Containerfile, compose files).
    Docker,
    /// The JVM: Java or Kotlin with Maven or Gradle.
    Java,
    /// Ruby (Bundler).
    Ruby,
    /// .NET (C#, F#, VB projects and solutions).
    Dotnet,
}

impl ProjectType {
    /// Every type, in their tie-breaking order.
    pub const ALL: [ProjectType; 9] = [
        ProjectType::Rust,
        ProjectType::Node,
        ProjectType::Python,
        ProjectType::Go,
        ProjectType::Nix,
        ProjectType::Docker,
        ProjectType::Java,
        ProjectType::Ruby,
        ProjectType::Dotnet,
    ];

    /// The lower-case name used in outputs (`rust`, `node`, …).
    pub fn name(self) -> &'static str {
        match self {
            ProjectType::Rust => "rust",
            ProjectType::Node => "node",
            ProjectType::Python => "python",
            ProjectType::Go => "go",
            ProjectType::Nix => "nix",
            ProjectType::Docker => "docker",
            ProjectType::Java => "java",
            ProjectType::Ruby => "ruby",
            ProjectType::Dotnet => "dotnet",
        }
    }

    /// The type with this [`name`](ProjectType::name).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }
}

impl fmt::Display for ProjectType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One project type found, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The type.
    pub kind: ProjectType,
    /// How sure: `0.0..=1.0`, two decimals.
    pub confidence: f64,
    /// The marker files, workspace-relative, shallowest first.
    pub evidence: Vec<String>,
    /// The directory of the project: the shallowest one holding a strong
    /// marker (a manifest such as `Cargo.toml`), or else the shallowest
    /// marker's; `.` for the root.
    pub dir: String,
    /// Type-specific facts: `package_manager` (node: npm, yarn, pnpm, bun;
    /// python: pip, uv, poetry, pdm, pipenv), `build_tool` (java: maven,
    /// gradle), `flake` (nix: true/false), `compose` (docker: true/false).
    pub details: BTreeMap<&'static str, String>,
}

impl Detection {
    /// A detail, if set.
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details.get(key).map(String::as_str)
    }

    /// `path` inside this project's directory (`dir/path`, or `path` at
    /// the root).
    pub fn join(&self, path: &str) -> String {
        if self.dir == "." { path.to_owned() } else { format!("{}/{path}", self.dir) }
    }
}

/// Directories never looked into: dependencies, build output, VCS data.
/// Hidden directories are skipped too (hidden files are not).
pub const SKIPPED_DIRS: [&str; 6] = ["node_modules", "target", "vendor", "__pycache__", "dist", "build"];

/// Lists the files under `root` down to `depth` directory levels (1 = the
/// root only, 2 = also its subdirectories, …), as `/`-separated relative
/// paths in sorted order. Symbolic links to directories are not followed;
/// directories that cannot be read below the root are skipped.
pub fn scan(root: &Path, depth: usize) -> io::Result<Vec<String>> {
    let mut files = Vec::new();
    if depth > 0 {
        walk(root, "", depth - 1, &mut files, true)?;
    }
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, prefix: &str, depth_left: usize, files: &mut Vec<String>, is_root: bool) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_root => return Err(e),
        Err(_) => return Ok(()),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else { continue };
        let Ok(file_type) = entry.file_type() else { continue };
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        if file_type.is_dir() {
            if depth_left > 0 && !name.starts_with('.') && !SKIPPED_DIRS.contains(&name.as_str()) {
                walk(&entry.path(), &rel, depth_left - 1, files, false)?;
            }
        } else {
            // Files and links to files (a linked Dockerfile still counts).
            files.push(rel);
        }
    }
    Ok(())
}

/// Scans `root` (see [`scan`]) and detects the project types in it.
pub fn detect(root: &Path, depth: usize) -> io::Result<Vec<Detection>> {
    Ok(detect_files(&scan(root, depth)?))
}

/// How a marker file counts.
#[derive(Debug, Clone, Copy)]
struct Marker {
    kind: ProjectType,
    weight: f64,
    /// A manifest: where the project is (see [`Detection::dir`]).
    strong: bool,
    detail: Option<(&'static str, &'static str)>,
}

const fn marker(kind: ProjectType, weight: f64) -> Marker {
    Marker { kind, weight, strong: weight >= 0.7, detail: None }
}

const fn with_detail(mut m: Marker, key: &'static str, value: &'static str) -> Marker {
    m.detail = Some((key, value));
    m
}

/// What a file name says (usually one marker; none for most files).
fn classify(name: &str) -> Option<Marker> {
    use ProjectType::*;
    let m = match name {
        "Cargo.toml" => marker(Rust, 0.9),
        "Cargo.lock" => marker(Rust, 0.6),
        "rust-toolchain" | "rust-toolchain.toml" => marker(Rust, 0.4),

        "package.json" => marker(Node, 0.9),
        "package-lock.json" | "npm-shrinkwrap.json" => with_detail(marker(Node, 0.6), "package_manager", "npm"),
        "yarn.lock" | ".yarnrc.yml" => with_detail(marker(Node, 0.6), "package_manager", "yarn"),
        "pnpm-lock.yaml" | "pnpm-workspace.yaml" => with_detail(marker(Node, 0.6), "package_manager", "pnpm"),
        "bun.lockb" | "bun.lock" => with_detail(marker(Node, 0.6), "package_manager", "bun"),
        ".nvmrc" | ".node-version" => marker(Node, 0.3),

        "pyproject.toml" => marker(Python, 0.85),
        "setup.py" | "Pipfile" => {
            let m = marker(Python, 0.75);
            if name == "Pipfile" { with_detail(m, "package_manager", "pipenv") } else { m }
        }
        "Pipfile.lock" => with_detail(marker(Python, 0.5), "package_manager", "pipenv"),
        "uv.lock" => with_detail(marker(Python, 0.6), "package_manager", "uv"),
        "poetry.lock" => with_detail(marker(Python, 0.6), "package_manager", "poetry"),
        "pdm.lock" => with_detail(marker(Python, 0.6), "package_manager", "pdm"),
        "setup.cfg" => marker(Python, 0.4),
        ".python-version" | "tox.ini" => marker(Python, 0.3),
        n if n.starts_with("requirements") && n.ends_with(".txt") => {
            with_detail(marker(Python, 0.7), "package_manager", "pip")
        }

        "go.mod" => marker(Go, 0.95),
        "go.work" => marker(Go, 0.6),
        "go.sum" => marker(Go, 0.5),

        "flake.nix" => with_detail(marker(Nix, 0.95), "flake", "true"),
        "flake.lock" => marker(Nix, 0.5),
        "default.nix" | "shell.nix" => marker(Nix, 0.5),

        "Dockerfile" | "Containerfile" | "dockerfile" | "containerfile" => marker(Docker, 0.9),
        "compose.yaml" | "compose.yml" | "docker-compose.yml" | "docker-compose.yaml" => {
            with_detail(marker(Docker, 0.8), "compose", "true")
        }
        ".dockerignore" | ".containerignore" => marker(Docker, 0.3),
        n if n.starts_with("Dockerfile.")
            || n.starts_with("Containerfile.")
            || n.ends_with(".Dockerfile")
            || n.ends_with(".dockerfile")
            || n.ends_with(".Containerfile") =>
        {
            marker(Docker, 0.7)
        }

        "pom.xml" => with_detail(marker(Java, 0.9), "build_tool", "maven"),
        "mvnw" => with_detail(marker(Java, 0.5), "build_tool", "maven"),
        "build.gradle" | "build.gradle.kts" => with_detail(marker(Java, 0.9), "build_tool", "gradle"),
        "settings.gradle" | "settings.gradle.kts" | "gradlew" => with_detail(marker(Java, 0.5), "build_tool", "gradle"),

        "Gemfile" => marker(Ruby, 0.9),
        "Gemfile.lock" => marker(Ruby, 0.6),
        ".ruby-version" | "Rakefile" => marker(Ruby, 0.3),
        n if n.ends_with(".gemspec") => marker(Ruby, 0.7),

        n if n.ends_with(".csproj") || n.ends_with(".fsproj") || n.ends_with(".vbproj") => marker(Dotnet, 0.9),
        n if n.ends_with(".sln") || n.ends_with(".slnx") => marker(Dotnet, 0.8),
        "Directory.Build.props" | "NuGet.Config" | "nuget.config" => marker(Dotnet, 0.4),

        _ => return None,
    };
    Some(m)
}

/// How much a marker `depth` directories below the root counts.
fn depth_factor(depth: usize) -> f64 {
    match depth {
        0 => 1.0,
        1 => 0.8,
        _ => 0.65,
    }
}

/// A file's directory level (0 = root) and directory (`.` = root).
fn location(path: &str) -> (usize, &str) {
    match path.rsplit_once('/') {
        Some((dir, _)) => (dir.matches('/').count() + 1, dir),
        None => (0, "."),
    }
}

/// Detects project types from workspace-relative file paths (as [`scan`]
/// lists them). The result is ordered most confident first (then
/// shallowest, then [`ProjectType::ALL`] order).
pub fn detect_files(files: &[String]) -> Vec<Detection> {
    // (depth, path, marker) per type.
    let mut found: BTreeMap<ProjectType, Vec<(usize, &str, Marker)>> = BTreeMap::new();
    for path in files {
        let name = path.rsplit('/').next().unwrap_or(path);
        if let Some(m) = classify(name) {
            found.entry(m.kind).or_default().push((location(path).0, path.as_str(), m));
        }
    }
    let mut out: Vec<(usize, Detection)> = found
        .into_iter()
        .map(|(kind, mut markers)| {
            markers.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
            let miss: f64 = markers.iter().map(|(depth, _, m)| 1.0 - m.weight * depth_factor(*depth)).product();
            let confidence = ((1.0 - miss) * 100.0).round() / 100.0;
            let home = markers.iter().find(|(_, _, m)| m.strong).unwrap_or(&markers[0]);
            let dir = location(home.1).1.to_owned();
            let mut details = BTreeMap::new();
            // Shallowest wins; at equal depth the first in `DETAIL_PRIORITY`.
            for (key, values) in DETAIL_PRIORITY {
                let best = markers
                    .iter()
                    .filter_map(|(depth, _, m)| {
                        let (k, v) = m.detail?;
                        (k == *key).then(|| (*depth, values.iter().position(|p| *p == v).unwrap_or(usize::MAX), v))
                    })
                    .min();
                if let Some((_, _, value)) = best {
                    details.insert(*key, value.to_owned());
                }
            }
            match kind {
                ProjectType::Node => {
                    details.entry("package_manager").or_insert_with(|| "npm".to_owned());
                }
                ProjectType::Python => {
                    details.entry("package_manager").or_insert_with(|| "pip".to_owned());
                }
                ProjectType::Nix => {
                    details.entry("flake").or_insert_with(|| "false".to_owned());
                }
                ProjectType::Docker => {
                    details.entry("compose").or_insert_with(|| "false".to_owned());
                }
                _ => {}
            }
            let evidence = markers.iter().map(|(_, p, _)| (*p).to_owned()).collect();
            (markers[0].0, Detection { kind, confidence, evidence, dir, details })
        })
        .collect();
    out.sort_by(|(da, a), (db, b)| {
        b.confidence.total_cmp(&a.confidence).then_with(|| da.cmp(db)).then_with(|| a.kind.cmp(&b.kind))
    });
    out.into_iter().map(|(_, d)| d).collect()
}

/// Which value of a detail wins when markers at the same depth disagree:
/// a specific lockfile over a generic one (a `bun.lockb` next to a stale
/// `package-lock.json` means bun).
const DETAIL_PRIORITY: &[(&str, &[&str])] = &[
    ("package_manager", &["bun", "pnpm", "yarn", "npm", "uv", "poetry", "pdm", "pipenv", "pip"]),
    ("build_tool", &["gradle", "maven"]),
    ("flake", &["true"]),
    ("compose", &["true"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn find(ds: &[Detection], kind: ProjectType) -> &Detection {
        ds.iter().find(|d| d.kind == kind).unwrap_or_else(|| panic!("{kind} not detected in {ds:?}"))
    }

    #[test]
    fn rust_confidence_grows_with_evidence() {
        let d = detect_files(&files(&["Cargo.toml"]));
        assert_eq!((d[0].kind, d[0].confidence), (ProjectType::Rust, 0.9));
        let d = detect_files(&files(&["Cargo.lock", "Cargo.toml", "README.md"]));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].confidence, 0.96);
        assert_eq!(d[0].evidence, ["Cargo.lock", "Cargo.toml"]);
        assert_eq!(d[0].dir, ".");
        let d = detect_files(&files(&["crates/x/Cargo.toml"]));
        assert_eq!((d[0].confidence, d[0].dir.as_str()), (0.59, "crates/x"));
        let d = detect_files(&files(&["app/Cargo.toml"]));
        assert_eq!((d[0].confidence, d[0].dir.as_str()), (0.72, "app"));
    }

    #[test]
    fn node_package_manager() {
        let d = detect_files(&files(&["package.json"]));
        assert_eq!(d[0].detail("package_manager"), Some("npm"));
        let d = detect_files(&files(&["package.json", "pnpm-lock.yaml"]));
        assert_eq!(d[0].detail("package_manager"), Some("pnpm"));
        let d = detect_files(&files(&["bun.lockb", "package-lock.json", "package.json"]));
        assert_eq!(d[0].detail("package_manager"), Some("bun"), "specific lockfile beats a stale npm one");
        let d = detect_files(&files(&["package.json", "yarn.lock", "web/package.json", "web/pnpm-lock.yaml"]));
        assert_eq!(d[0].detail("package_manager"), Some("yarn"), "the root's lockfile wins");
        assert_eq!(d[0].dir, ".");
        let d = detect_files(&files(&["web/package.json", "web/package-lock.json"]));
        assert_eq!((d[0].dir.as_str(), d[0].join("node_modules").as_str()), ("web", "web/node_modules"));
    }

    #[test]
    fn python_variants() {
        for (list, pm) in [
            (&["requirements.txt"][..], "pip"),
            (&["requirements-dev.txt", "setup.py"][..], "pip"),
            (&["pyproject.toml", "uv.lock"][..], "uv"),
            (&["pyproject.toml", "poetry.lock"][..], "poetry"),
            (&["Pipfile", "Pipfile.lock"][..], "pipenv"),
            (&["pyproject.toml"][..], "pip"),
        ] {
            let d = detect_files(&files(list));
            assert_eq!(d[0].kind, ProjectType::Python, "{list:?}");
            assert_eq!(d[0].detail("package_manager"), Some(pm), "{list:?}");
        }
    }

    #[test]
    fn nix_flake_is_stronger_than_classic() {
        let flake = detect_files(&files(&["flake.lock", "flake.nix"]));
        let classic = detect_files(&files(&["shell.nix"]));
        assert_eq!(flake[0].detail("flake"), Some("true"));
        assert_eq!(classic[0].detail("flake"), Some("false"));
        assert!(flake[0].confidence > 0.95 && classic[0].confidence == 0.5);
    }

    #[test]
    fn mixed_repository_is_ordered_by_confidence() {
        let d = detect_files(&files(&[
            ".dockerignore",
            "Cargo.lock",
            "Cargo.toml",
            "Dockerfile",
            "docs/requirements.txt",
            "flake.lock",
            "flake.nix",
            "ui/package.json",
            "ui/yarn.lock",
            "LICENSE",
        ]));
        let kinds: Vec<&str> = d.iter().map(|d| d.kind.name()).collect();
        assert_eq!(kinds, ["nix", "rust", "docker", "node", "python"]);
        assert_eq!(find(&d, ProjectType::Docker).confidence, 0.93);
        assert_eq!(find(&d, ProjectType::Node).detail("package_manager"), Some("yarn"));
        assert_eq!(find(&d, ProjectType::Python).confidence, 0.56);
    }

    #[test]
    fn other_ecosystems() {
        let d = detect_files(&files(&["go.mod", "go.sum"]));
        assert_eq!((d[0].kind, d[0].confidence), (ProjectType::Go, 0.98));
        let d = detect_files(&files(&["build.gradle.kts", "gradlew", "settings.gradle.kts"]));
        assert_eq!((d[0].kind, d[0].detail("build_tool")), (ProjectType::Java, Some("gradle")));
        let d = detect_files(&files(&["mvnw", "pom.xml"]));
        assert_eq!(d[0].detail("build_tool"), Some("maven"));
        let d = detect_files(&files(&["Gemfile", "Gemfile.lock", "x.gemspec"]));
        assert_eq!(d[0].kind, ProjectType::Ruby);
        let d = detect_files(&files(&["App.sln", "src/App/App.csproj"]));
        assert_eq!((d[0].kind, d[0].dir.as_str()), (ProjectType::Dotnet, "."));
        let d = detect_files(&files(&["compose.yaml", "api/Dockerfile.dev"]));
        assert_eq!(d[0].detail("compose"), Some("true"));
        assert!(detect_files(&files(&["README.md", "Makefile", "src/main.c"])).is_empty());
    }

    #[test]
    fn names() {
        for t in ProjectType::ALL {
            assert_eq!(ProjectType::from_name(t.name()), Some(t));
        }
        assert_eq!(ProjectType::from_name("cobol"), None);
    }

    #[test]
    fn scan_respects_depth_and_skips() {
        let root = std::env::temp_dir().join(format!("viaduct-detect-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["a/b", "node_modules/x", ".git", "target"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        for f in ["Cargo.toml", ".nvmrc", "a/package.json", "a/b/go.mod", "node_modules/x/package.json", ".git/HEAD"] {
            std::fs::write(root.join(f), "").unwrap();
        }
        assert_eq!(scan(&root, 1).unwrap(), [".nvmrc", "Cargo.toml"]);
        assert_eq!(scan(&root, 2).unwrap(), [".nvmrc", "Cargo.toml", "a/package.json"]);
        assert_eq!(scan(&root, 3).unwrap(), [".nvmrc", "Cargo.toml", "a/b/go.mod", "a/package.json"]);
        assert!(scan(&root, 0).unwrap().is_empty());
        let d = detect(&root, 3).unwrap();
        assert_eq!(find(&d, ProjectType::Go).dir, "a/b");
        std::fs::remove_dir_all(&root).unwrap();
        assert!(scan(&root, 1).is_err(), "a missing root is an error");
    }
}
