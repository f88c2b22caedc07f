//! Who a host job's processes run as, and what of the machine they see.
//!
//! A host job is untrusted code on the runner machine. Without isolation
//! it could read the runner's identity (`WORK_DIR/runner.json`: the token
//! that claims jobs and their secrets), other jobs' workspaces, and — in
//! `/proc` — other jobs' environments (their secrets) and command lines.
//! When the runner runs as root (the recommended deployment for host jobs),
//! each **slot** gets its own unprivileged user (uid = gid = base + slot,
//! locked machine-wide from its first job until the runner exits:
//! [`UID_LOCKS`]): a step's
//! process, after joining its cgroup, enters its job's mount namespace
//! ([`StepMounts`]: its own, made ahead or at its setup, its `/proc` mounted
//! `hidepid=invisible`, so it sees only its own user's processes) and drops
//! to that user. The work directory is 0711 (no
//! listing), `runner.json` 0600 root, each job directory 0700 owned by its
//! slot user. Files the runner itself writes into a workspace (the source
//! checkout, what plugins write) are handed to the slot user afterwards
//! ([`give`]).
//!
//! A slot keeps its user from one job to the next: a job whose slot's
//! previous job is still being torn down waits for that job to let the user
//! go ([`SlotUser::releasing`]) — once its processes are dead and its
//! directory is closed to the user — rather than run as another, so a
//! one-slot runner runs every job as one user (what an administrator gives
//! a deploy target to). Only a slot held for longer (a held environment)
//! or quarantined ([`SlotUser::quarantine`]: its job's processes would not
//! die) makes a job take a user past the runner's slots.
//!
//! A runner that is not root cannot switch users: its jobs run as its own
//! user (it logs so); `--shared-job-user` asks for that as root too. Both
//! are documented in docs/security.md.

use std::os::unix::ffi::OsStrExt;
use std::{
    ffi::CString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

/// Longest a job waits for its slot's previous job to let the user go
/// (that job's teardown waits up to 5 s for its processes to die); then it
/// takes another user.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Oldest a spare mount namespace may be when a job takes it
/// ([`SlotUsers::mounts`]); older, it is dropped
/// ([`SlotUsers::drop_stale_mounts`]) and the job makes its own. So a job
/// sees the machine's mounts as of at most this long before it: where the
/// machine's `/` is not shared, mounts made or removed on it later do not
/// reach a namespace made before (a spare kept longer would also keep
/// every filesystem mounted when it was made busy), and a file replaced
/// by a rename on the machine (`useradd` writing `/etc/passwd`) takes the
/// slot users' file bound over it away in the namespaces made before.
/// Measured on `CLOCK_BOOTTIME`: time suspended counts.
pub const SPARE_MOUNTS_AGE: Duration = Duration::from_secs(30);

/// The slot users of one runner.
#[derive(Debug)]
pub struct SlotUsers {
    base: u32,
    /// Supplementary groups of every slot user (e.g. `nix-users`).
    groups: Arc<[libc::gid_t]>,
    /// The runner's own slots (the first of `taken`; more are added when
    /// all of these are held).
    slots: usize,
    /// What each slot's user is doing, and its uid's lock.
    taken: Mutex<Vec<SlotState>>,
    /// Woken when a slot is free again.
    freed: tokio::sync::Notify,
    /// Jobs get their own mount namespace with a private `/proc` (it
    /// works here: checked once at start, see [`StepMounts::works`]).
    private_proc: bool,
    /// Where a lock on each uid this runner has used is held
    /// ([`UID_LOCKS`]), when it can be.
    locks: Option<PathBuf>,
    /// Mount namespaces made ahead of the jobs that will take them, with
    /// when each was made ([`since_boot`]), oldest first; at most one a
    /// slot ([`SlotUsers::mounts`]).
    spare_mounts: Mutex<Vec<(Duration, StepMounts)>>,
}

/// Where runners on one machine lock the uids their jobs run as: a uid
/// another runner holds (two runners whose `--job-user-base` ranges
/// overlap, or one that went past its slots) is skipped, so two jobs never
/// share a user.
///
/// A runner keeps a uid's lock from the first job that runs as it until
/// the runner exits, free slot or not (a slot past its own too: another
/// runner whose range overlaps takes other uids meanwhile). Let go between
/// jobs, the lock could not be taken back at once: a step process another
/// job is starting right then shares every open file of the runner, this
/// lock's too, between its fork and its exec, and the slot's next job
/// would run as another user.
pub const UID_LOCKS: &str = "/run/viaduct-runner";

/// A user processes drop to, and the mount namespace they enter first.
#[derive(Debug, Clone)]
pub struct JobUser {
    /// Uid (and gid).
    pub uid: u32,
    private_proc: bool,
    /// The job's mount namespace, made at its setup
    /// ([`JobUser::set_mounts`]) when it gets a private `/proc`.
    mounts: Option<Arc<StepMounts>>,
    groups: Arc<[libc::gid_t]>,
}

/// The mount namespace of one job's processes, made for it alone (at its
/// setup, or ahead of it: [`SlotUsers::mounts`]) and gone with it: the
/// machine's mounts (a slave of them — mounts and
/// unmounts on the machine reach it, nothing made in it reaches the
/// machine), a `/proc` mounted `hidepid=invisible` (a process sees only its
/// own user's), and the slot users' `/etc/passwd` and `/etc/group`
/// ([`write_identities`]) bound over the originals. Each of the job's
/// processes enters it with one `setns` between `clone` and `exec` (a
/// namespace of each step's own — copied and mounted, then torn down when
/// the step exits, which waits for an RCU grace period — cost ~110 µs a
/// step). Whatever the job mounts in it (a FUSE filesystem through a
/// setuid helper) goes with it.
#[derive(Debug)]
pub struct StepMounts(OwnedFd);

impl StepMounts {
    /// Makes the namespace, on a thread of its own (`unshare` moves only
    /// the calling thread; the runner's other threads keep the machine's
    /// view), and keeps it by a descriptor once the thread is gone.
    /// Blocking (~0.1–0.3 ms).
    pub fn new() -> std::io::Result<Self> {
        let made = std::thread::Builder::new().name("viaduct-mounts".into()).spawn(|| {
            // SAFETY: plain syscalls on NUL-terminated strings that live
            // for the whole program; they change this thread's mount
            // namespace only.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ))?;
                // `invisible` exists since Linux 5.8, when each proc mount
                // got its own options; older kernels refuse it (where
                // `hidepid=2` would have changed the machine's /proc).
                check(libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"hidepid=invisible".as_ptr().cast(),
                ))?;
                // Best effort: without them a program that looks its user
                // up fails as it would have anyway.
                if let Some(ids) = IDENTITIES.get() {
                    for (from, to) in [&ids.passwd, &ids.group] {
                        libc::mount(from.as_ptr(), to.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null());
                    }
                }
            }
            // Close-on-exec: no step's program inherits it.
            std::fs::File::open("/proc/thread-self/ns/mnt").map(OwnedFd::from)
        })?;
        let fd = made.join().map_err(|_| std::io::Error::other("the thread making the namespace panicked"))??;
        Ok(Self(fd))
    }

    /// Whether jobs' processes can be given one here: made, and entered
    /// from the runner's own view (`setns` also needs `CAP_SYS_CHROOT`)
    /// onto the same root — a runner confined by `chroot` would leave its
    /// root by entering it, and is refused.
    pub fn works() -> std::io::Result<()> {
        let mounts = Self::new()?;
        let fd = mounts.0.as_raw_fd();
        let probe = std::thread::Builder::new().name("viaduct-mounts".into()).spawn(move || {
            use std::os::unix::fs::MetadataExt;
            let root = |m: std::fs::Metadata| (m.dev(), m.ino());
            let before = root(std::fs::metadata("/")?);
            // SAFETY: plain syscalls; they change this thread's
            // filesystem attributes and mount namespace only.
            unsafe {
                check(libc::unshare(libc::CLONE_FS))?;
                check(libc::setns(fd, libc::CLONE_NEWNS))?;
            }
            if root(std::fs::metadata("/")?) == before {
                Ok(())
            } else {
                Err(std::io::Error::other("the runner runs in a chroot: its jobs' processes would leave it"))
            }
        })?;
        let entered = probe.join().map_err(|_| std::io::Error::other("the probe panicked"))?;
        drop(mounts);
        entered
    }

    /// Enters the namespace (the calling process must not share its
    /// filesystem attributes: a child between `clone` without `CLONE_FS`
    /// and `exec`). A plain system call: callable there.
    pub fn enter(fd: libc::c_int) -> std::io::Result<()> {
        // SAFETY: a plain system call on a descriptor the caller keeps open.
        check(unsafe { libc::setns(fd, libc::CLONE_NEWNS) })
    }
}

impl AsFd for StepMounts {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// Time since the machine booted, time suspended included
/// (`CLOCK_BOOTTIME`): how old a spare mount namespace is.
fn since_boot() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a plain system call writing into `ts`; it cannot fail for
    // this clock on Linux ≥ 2.6.39.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

/// Whether a spare made at `made` ([`since_boot`]) may still be given.
fn fresh(made: Duration) -> bool {
    since_boot().saturating_sub(made) < SPARE_MOUNTS_AGE
}

fn check(r: libc::c_int) -> std::io::Result<()> {
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A slot of [`SlotUsers`].
#[derive(Debug)]
struct SlotState {
    now: Slot,
    /// Its uid's lock, taken with its first job and kept (see
    /// [`UID_LOCKS`]); `None` until then, and where locks cannot be taken
    /// (tried again with each job).
    lock: Option<std::fs::File>,
}

/// What a slot's user is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    /// A job runs (or is held) as it.
    Taken,
    /// Its job ended and is being torn down: free within moments.
    Releasing,
}

/// The user a job runs as (its slot is free again when this is dropped).
#[derive(Debug)]
pub struct SlotUser {
    /// Who the job's processes run as.
    pub user: JobUser,
    slot: usize,
    pool: Arc<SlotUsers>,
    /// Kept taken for good ([`SlotUser::quarantine`]).
    quarantined: bool,
}

impl SlotUser {
    /// Its job has ended and is being torn down: a next job on this slot
    /// waits for the user rather than take another (see the module's
    /// documentation). The teardown then drops it as soon as nothing of
    /// the job can be reached as this user.
    pub fn releasing(&self) {
        self.pool.set(self.slot, Slot::Releasing);
    }

    /// Keeps the slot taken for as long as this runner runs (its uid's
    /// lock with it, as always): something of its job may still run as the
    /// user (a process that would not die). Jobs take other users
    /// meanwhile; a restarted runner kills what its jobs left first.
    pub fn quarantine(mut self) {
        self.quarantined = true;
        self.pool.set(self.slot, Slot::Taken);
        // A job waiting for this slot's user takes another now.
        self.pool.freed.notify_waiters();
    }
}

impl Drop for SlotUser {
    fn drop(&mut self) {
        if !self.quarantined {
            self.pool.set(self.slot, Slot::Free);
            self.pool.freed.notify_waiters();
        }
    }
}

impl SlotUsers {
    /// Users `base`, `base + 1`, … for `slots` slots, members of `groups`
    /// (names), named in the `passwd` and `group` files written into
    /// `dir` ([`write_identities`]); `None` (logged) when this process
    /// cannot switch users (not root). A group that does not exist is left
    /// out, with a warning.
    pub fn new(base: u32, slots: u32, groups: &[String], dir: &Path) -> Option<Arc<Self>> {
        if !nix::unistd::geteuid().is_root() {
            tracing::warn!(
                "host jobs run as this runner's own user (it is not root): a job can read the runner's files. Run the \
                 runner as root (each slot's jobs then run as their own user) or give untrusted work container jobs"
            );
            return None;
        }
        // Slots beyond `slots` are taken when all are busy (held
        // environments, a teardown that outlasts the wait) or when another
        // runner holds a uid: names for a generous range.
        if let Err(e) = write_identities(dir, base, slots.saturating_add(256)) {
            tracing::warn!(error = %e, "cannot write the slot users' passwd and group: programs that look their user up (ssh) fail in host jobs");
        }
        let private_proc = match StepMounts::works() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "a private /proc (hidepid) cannot be given to jobs here: host jobs see every process's command line"
                );
                false
            }
        };
        let locks = match std::fs::create_dir_all(UID_LOCKS) {
            Ok(()) => {
                restrict(Path::new(UID_LOCKS), 0o700);
                Some(PathBuf::from(UID_LOCKS))
            }
            Err(e) => {
                tracing::warn!(dir = UID_LOCKS, error = %e, "cannot lock the uids jobs run as: runners on this machine must be given --job-user-base ranges that do not overlap");
                None
            }
        };
        let gids: Vec<libc::gid_t> = groups
            .iter()
            .filter_map(|name| match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Some(g.gid.as_raw()),
                _ => {
                    tracing::warn!(group = %name, "no such group: slot users are not members of it");
                    None
                }
            })
            .collect();
        tracing::info!(base, slots, private_proc, groups = ?groups, "host jobs run as per-slot users");
        let slots = slots.max(1) as usize;
        Some(Arc::new(Self {
            base,
            groups: gids.into(),
            slots,
            taken: Mutex::new((0..slots).map(|_| SlotState { now: Slot::Free, lock: None }).collect()),
            freed: tokio::sync::Notify::new(),
            private_proc,
            locks,
            spare_mounts: Mutex::new(Vec::new()),
        }))
    }

    /// The mount namespace for a job about to start (when jobs get a
    /// private `/proc`): a spare made at the end of a job before, or a new
    /// one. Blocking. A spare is as fresh as one made now — no process has
    /// entered it — and was made less than [`SPARE_MOUNTS_AGE`] ago; the
    /// job's setup no longer waits for the ~0.2 ms that making one takes.
    /// [`SlotUsers::make_spare_mounts`] makes the next.
    pub fn mounts(&self) -> std::io::Result<StepMounts> {
        let spare = {
            let mut spares = self.spare_mounts.lock().unwrap_or_else(|p| p.into_inner());
            // The newest is last. A stale one is left to `drop_stale_mounts`,
            // off the job's way (closing a namespace waits for RCU).
            match spares.last() {
                Some((made, _)) if fresh(*made) => spares.pop(),
                _ => None,
            }
        };
        match spare {
            Some((_, mounts)) => Ok(mounts),
            None => StepMounts::new(),
        }
    }

    /// Makes a spare mount namespace for the next job to take, unless each
    /// slot has one already (stale ones dropped first). Blocking; meant for
    /// after a job's setup, off the job's way. A namespace that cannot be
    /// made is the next job's to fail on (it makes its own then).
    pub fn make_spare_mounts(&self) {
        if !self.private_proc || !self.drop_stale_mounts() {
            return;
        }
        match StepMounts::new() {
            Ok(mounts) => {
                let surplus = {
                    let mut spares = self.spare_mounts.lock().unwrap_or_else(|p| p.into_inner());
                    if spares.len() < self.slots {
                        // Stamped under the lock: the list stays oldest first.
                        spares.push((since_boot(), mounts));
                        None
                    } else {
                        Some(mounts)
                    }
                };
                // Closed outside the lock (it waits for RCU).
                drop(surplus);
            }
            Err(e) => tracing::debug!(error = %e, "cannot make a spare mount namespace"),
        }
    }

    /// Drops the spare mount namespaces made [`SPARE_MOUNTS_AGE`] ago or
    /// more; whether a slot has none left. Blocking.
    pub fn drop_stale_mounts(&self) -> bool {
        let (stale, wanted) = {
            let mut spares = self.spare_mounts.lock().unwrap_or_else(|p| p.into_inner());
            let stale = spares.partition_point(|(made, _)| !fresh(*made));
            let stale: Vec<_> = spares.drain(..stale).collect();
            (stale, spares.len() < self.slots)
        };
        // Closed outside the lock (each waits for RCU).
        drop(stale);
        wanted
    }

    /// The user of a free slot whose uid no other runner holds. When
    /// none of the runner's own slots is free but one is being released,
    /// it waits for that one (up to [`RELEASE_WAIT`]); when they are all
    /// held, it takes a user past them (a job never waits for a held
    /// environment).
    pub async fn take(self: &Arc<Self>) -> SlotUser {
        let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
        loop {
            // Registered before looking: a release in between still wakes it.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(user) = self.try_take(tokio::time::Instant::now() < deadline) {
                return user;
            }
            let _ = tokio::time::timeout_at(deadline, freed).await;
        }
    }

    /// [`SlotUsers::take`] without waiting: `None` when it should wait
    /// (`may_wait`) for one of the runner's own slots being released.
    fn try_take(self: &Arc<Self>, may_wait: bool) -> Option<SlotUser> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let mut extra = false;
        let mut slot = 0;
        loop {
            if slot == self.slots {
                if may_wait && taken[..self.slots].iter().any(|s| s.now == Slot::Releasing) {
                    return None;
                }
                extra = true;
            }
            if slot == taken.len() {
                taken.push(SlotState { now: Slot::Free, lock: None });
            }
            let state = &mut taken[slot];
            if state.now == Slot::Free {
                let locked = match state.lock {
                    Some(_) => Ok(()),
                    None => self.lock(self.uid_of(slot)).map(|lock| state.lock = lock),
                };
                match locked {
                    Ok(()) => {
                        state.now = Slot::Taken;
                        if extra {
                            tracing::debug!(uid = self.uid_of(slot), "all slots' users are held: one past them");
                        }
                        return Some(SlotUser {
                            user: JobUser {
                                uid: self.uid_of(slot),
                                private_proc: self.private_proc,
                                mounts: None,
                                groups: Arc::clone(&self.groups),
                            },
                            slot,
                            pool: Arc::clone(self),
                            quarantined: false,
                        });
                    }
                    Err(e) => tracing::debug!(uid = self.uid_of(slot), error = %e, "uid in use elsewhere"),
                }
            }
            slot += 1;
        }
    }

    fn set(&self, slot: usize, to: Slot) {
        if let Some(t) = self.taken.lock().unwrap_or_else(|p| p.into_inner()).get_mut(slot) {
            t.now = to;
        }
    }

    /// For tests: users from `base` for one slot, their files in a new
    /// temporary directory; `None` (said) where this process is not root.
    #[cfg(test)]
    pub fn for_tests(base: u32) -> Option<(tempfile::TempDir, Arc<Self>)> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: slot users need root");
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let users = Self::new(base, 1, &[], dir.path())?;
        Some((dir, users))
    }

    fn uid_of(&self, slot: usize) -> u32 {
        self.base.saturating_add(u32::try_from(slot).unwrap_or(u32::MAX))
    }

    /// An exclusive lock on `uid`'s file in [`UID_LOCKS`]; `Err` when
    /// another process holds it; `Ok(None)` where there are no locks.
    fn lock(&self, uid: u32) -> std::io::Result<Option<std::fs::File>> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(dir) = &self.locks else { return Ok(None) };
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(format!("uid-{uid}.lock")))
        {
            Ok(f) => f,
            // Locks cannot be taken here: go on without (as without the
            // directory).
            Err(e) => {
                tracing::warn!(error = %e, "cannot lock a uid's file: going on without");
                return Ok(None);
            }
        };
        // SAFETY: a plain system call on an open descriptor.
        check(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) })?;
        Ok(Some(file))
    }
}

impl JobUser {
    /// Whether its processes get a private `/proc` (see [`StepMounts`]).
    pub fn private_proc(&self) -> bool {
        self.private_proc
    }

    /// Gives the job the mount namespace its processes enter.
    pub fn set_mounts(&mut self, mounts: StepMounts) {
        self.mounts = Some(Arc::new(mounts));
    }

    /// The mount namespace its processes enter ([`StepMounts`]).
    pub fn mounts(&self) -> Option<BorrowedFd<'_>> {
        self.mounts.as_ref().map(|m| m.0.as_fd())
    }

    /// Its supplementary groups (exactly these: the runner's are dropped).
    pub fn groups(&self) -> &[libc::gid_t] {
        &self.groups
    }
}

/// Gives `path` and everything under it (not following links) to user
/// `uid`: the runner wrote them as root (a checkout, a plugin's files, a
/// restored cache). Blocking.
///
/// The job's processes may be running and own the tree, so every step is
/// taken through directory handles, never by path: a directory swapped for
/// a link while this walks (`a` → `/etc`, then `a/shadow` handed over) is
/// never followed, nor is `path` itself when it is a link. A file with
/// several names is left as it is (it may be another name of a file
/// outside).
pub fn give(uid: u32, path: &Path) {
    use nix::fcntl::{AT_FDCWD, OFlag, openat};
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(AT_FDCWD, path, flags, nix::sys::stat::Mode::empty()) {
        Ok(root) => {
            hand_over(uid, &root, path, 0);
            if let Err(e) = nix::unistd::fchown(&root, Some(uid.into()), Some(uid.into())) {
                tracing::debug!(path = %path.display(), error = %e, "cannot hand a directory to the job's user");
            }
        }
        // A file, or a link: given as it is (never what a link points at).
        Err(_) => {
            let _ = std::os::unix::fs::lchown(path, Some(uid), Some(uid));
        }
    }
}

/// Deepest directory [`give`] walks into (the rest is left as it is).
const GIVE_DEPTH: usize = 256;

/// Gives everything in the open directory `dir` (at `at`, for messages)
/// to `uid`, walking into its directories.
fn hand_over(uid: u32, dir: &std::os::fd::OwnedFd, at: &Path, depth: usize) {
    use nix::{
        fcntl::{AtFlags, OFlag, openat},
        sys::stat::{Mode, SFlag, fstatat},
    };
    let listed = dir
        .try_clone()
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(nix::dir::Dir::from_fd);
    let names: Vec<std::ffi::CString> = match listed {
        Ok(mut d) => d
            .iter()
            .flatten()
            .map(|e| e.file_name().to_owned())
            .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
            .collect(),
        Err(e) => {
            tracing::debug!(path = %at.display(), error = %e, "cannot list a directory to hand to the job's user");
            return;
        }
    };
    for name in names {
        let Ok(st) = fstatat(dir, name.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) else { continue };
        let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        if st.st_uid != uid && (is_dir || st.st_nlink <= 1) {
            let owner = (Some(uid.into()), Some(uid.into()));
            if let Err(e) = nix::unistd::fchownat(dir, name.as_c_str(), owner.0, owner.1, AtFlags::AT_SYMLINK_NOFOLLOW)
            {
                tracing::debug!(path = %at.display(), error = %e, "cannot hand a file to the job's user");
            }
        }
        if is_dir && depth < GIVE_DEPTH {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            if let Ok(sub) = openat(dir, name.as_c_str(), flags, Mode::empty()) {
                hand_over(uid, &sub, &at.join(std::ffi::OsStr::from_bytes(name.as_bytes())), depth + 1);
            }
        }
    }
}

/// `/etc/passwd` and `/etc/group` as a slot user's steps see them: the
/// machine's, plus an entry for each slot user (`viaduct-slot-N`, home
/// `/nonexistent`), so that programs which look their user up — `ssh` (and
/// so git over ssh, the `ssh-deploy` plugin), `whoami`, Python's `getpass` —
/// work. Written once by the runner ([`write_identities`]); bound over the
/// originals in the steps' mount namespace ([`StepMounts`]).
struct Identities {
    passwd: (CString, CString),
    group: (CString, CString),
}

static IDENTITIES: std::sync::OnceLock<Identities> = std::sync::OnceLock::new();

/// Writes the user and group files slot users' steps see (see
/// [`Identities`]) into `dir`: the machine's entries, then one for each uid
/// of `base..base + count` the machine does not name.
fn write_identities(dir: &Path, base: u32, count: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    let known = |file: &str| -> std::io::Result<(String, Vec<u32>)> {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let ids = text.lines().filter_map(|l| l.split(':').nth(2)?.parse().ok()).collect();
        Ok((text, ids))
    };
    let write = |name: &str, mut text: String, taken: &[u32], line: &dyn Fn(u32, u32) -> String| {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for (i, uid) in (base..base.saturating_add(count)).enumerate() {
            if !taken.contains(&uid) {
                text.push_str(&line(u32::try_from(i).unwrap_or(0), uid));
            }
        }
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        std::fs::rename(&tmp, &path)?;
        Ok::<_, std::io::Error>(path)
    };
    let (passwd, uids) = known("/etc/passwd")?;
    let (group, gids) = known("/etc/group")?;
    let p = write("slot-users.passwd", passwd, &uids, &|i, uid| {
        format!("viaduct-slot-{i}:x:{uid}:{uid}:Viaduct job slot {i}:/nonexistent:/bin/sh\n")
    })?;
    let g = write("slot-users.group", group, &gids, &|i, gid| format!("viaduct-slot-{i}:x:{gid}:\n"))?;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let ids = Identities {
        passwd: (c(&p)?, CString::new("/etc/passwd").unwrap_or_default()),
        group: (c(&g)?, CString::new("/etc/group").unwrap_or_default()),
    };
    let _ = IDENTITIES.set(ids);
    Ok(())
}

/// Warns when slot users cannot reach `work_dir`: a directory above it
/// that others may not pass through (a work directory under `/root`). Their
/// steps enter their working directory as themselves, so every one would
/// fail to start.
pub fn check_reachable(work_dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(dir) = work_dir.canonicalize() else { return };
    for above in dir.ancestors().skip(1) {
        if above.metadata().is_ok_and(|m| m.permissions().mode() & 0o001 == 0) {
            tracing::warn!(
                work_dir = %dir.display(),
                closed = %above.display(),
                "host jobs run as slot users, who cannot pass through this directory to reach the work directory: \
                 their steps cannot start. Put the work directory (--work-dir) where every directory above it is \
                 searchable by others (e.g. /var/lib/viaduct-runner)"
            );
            return;
        }
    }
}

/// Sets `path`'s mode (0711 for the work directory: jobs pass through it,
/// never list it).
pub fn restrict(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        tracing::warn!(path = %path.display(), error = %e, "cannot restrict the permissions of the runner's directory");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::SlotUsers;

    #[tokio::test]
    async fn a_slot_keeps_its_user_and_a_quarantined_one_is_not_given_again() {
        let Some((_dir, users)) = SlotUsers::for_tests(61_950) else { return };
        let first = users.take().await;
        assert_eq!(first.user.uid, 61_950);
        // Its job is being torn down: the next one waits for the user…
        first.releasing();
        assert!(users.try_take(true).is_none(), "the next job waits for the slot's user");
        drop(first);
        // …and gets it.
        let second = users.take().await;
        assert_eq!(second.user.uid, 61_950);
        // A user something of a job may still run as is never given again.
        second.quarantine();
        let third = users.take().await;
        assert_eq!(third.user.uid, 61_951, "another user, past the slots");
        third.releasing();
        drop(third);
        assert_eq!(users.take().await.user.uid, 61_951);
    }

    #[tokio::test]
    async fn a_step_starting_elsewhere_does_not_take_the_slot_user_from_the_next_job() {
        use std::io::{Read, Write};
        use std::os::{fd::AsRawFd, unix::process::CommandExt};
        let Some((_dir, users)) = SlotUsers::for_tests(61_940) else { return };
        let first = users.take().await;
        assert_eq!(first.user.uid, 61_940);
        // Another job's step process, forked and not yet exec'd: it shares
        // every open file of the runner meanwhile.
        // Close-on-exec: children of other tests do not hold them.
        let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (ready_w, go_r, go_w_copy) = (ready_w.as_raw_fd(), go_r.as_raw_fd(), go_w.as_raw_fd());
        let mut step = std::process::Command::new("true");
        // SAFETY: only close, write and read, which may be called after a fork.
        unsafe {
            step.pre_exec(move || {
                let mut b = [0u8; 1];
                libc::close(go_w_copy);
                libc::write(ready_w, b"r".as_ptr().cast(), 1);
                libc::read(go_r, b.as_mut_ptr().cast(), 1);
                Ok(())
            });
        }
        let starting = std::thread::spawn(move || step.spawn().unwrap().wait().unwrap());
        std::fs::File::from(ready_r).read_exact(&mut [0u8; 1]).unwrap();
        drop(first);
        let next = users.take().await.user.uid;
        std::fs::File::from(go_w).write_all(b"g").unwrap();
        assert!(starting.join().unwrap().success());
        assert_eq!(next, 61_940, "the slot's next job runs as its user");
    }

    #[test]
    fn a_job_takes_a_spare_mount_namespace_only_while_it_is_fresh() {
        use std::os::fd::AsFd;
        let Some((_dir, users)) = SlotUsers::for_tests(61_930) else { return };
        if !users.private_proc {
            eprintln!("skipped: no private /proc here");
            return;
        }
        let inode = |m: &super::StepMounts| nix::sys::stat::fstat(m.as_fd()).unwrap().st_ino;
        let spares = || users.spare_mounts.lock().unwrap().iter().map(|(_, m)| inode(m)).collect::<Vec<_>>();
        // Made ahead, at most one a slot.
        users.make_spare_mounts();
        users.make_spare_mounts();
        let made = spares();
        assert_eq!(made.len(), 1, "one slot, one spare");
        // The next job takes it…
        let taken = users.mounts().unwrap();
        assert_eq!(inode(&taken), made[0]);
        assert!(spares().is_empty());
        // …and without one, makes its own.
        let own = users.mounts().unwrap();
        assert_ne!(inode(&own), inode(&taken), "a namespace of its own");
        // A spare made too long ago is dropped, not given.
        users.make_spare_mounts();
        let old = {
            let mut spares = users.spare_mounts.lock().unwrap();
            let Some(long_ago) = super::since_boot().checked_sub(super::SPARE_MOUNTS_AGE) else { return };
            spares[0].0 = long_ago;
            // Kept alive here, so a new namespace cannot reuse its number.
            super::StepMounts(spares[0].1.as_fd().try_clone_to_owned().unwrap())
        };
        let fresh = users.mounts().unwrap();
        assert_ne!(inode(&fresh), inode(&old), "the stale spare is not given");
        // Dropped off the job's way, with the next spare made…
        users.make_spare_mounts();
        let next = spares();
        assert_eq!(next.len(), 1);
        assert_ne!(next[0], inode(&old), "the stale spare is dropped");
        // …or by itself once stale, made or not.
        users.spare_mounts.lock().unwrap()[0].0 = super::since_boot().saturating_sub(super::SPARE_MOUNTS_AGE);
        assert!(users.drop_stale_mounts(), "a slot has no spare now");
        assert!(spares().is_empty());
    }

    #[test]
    fn give_hands_over_the_tree_and_nothing_it_links_to() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: handing files to another user needs root");
            return;
        }
        const UID: u32 = 61_999;
        let dir = tempfile::tempdir().unwrap();
        let (ws, outside) = (dir.path().join("ws"), dir.path().join("outside"));
        std::fs::create_dir_all(ws.join("a/b")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(ws.join("a/b/f"), b"x").unwrap();
        std::fs::write(outside.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(&outside, ws.join("link")).unwrap();
        std::fs::hard_link(outside.join("secret"), ws.join("hard")).unwrap();
        super::give(UID, &ws);
        let uid = |p: &std::path::Path| std::fs::symlink_metadata(p).unwrap().uid();
        for p in ["", "a", "a/b", "a/b/f", "link"] {
            assert_eq!(uid(&ws.join(p)), UID, "{p}");
        }
        assert_eq!(uid(&outside), 0, "a link's target is not handed over");
        assert_eq!(uid(&outside.join("secret")), 0, "nor another name of a file outside");
        // A workspace that is itself a link: only the link changes hands.
        std::os::unix::fs::symlink(&outside, dir.path().join("ws2")).unwrap();
        super::give(UID, &dir.path().join("ws2"));
        assert_eq!(uid(&outside), 0);
        assert_eq!(uid(&outside.join("secret")), 0);
    }
}
