//! The optional syscall filter of a worker process (`EngineBuilder::seccomp`).
//!
//! Once its plugin has loaded, a worker needs nothing from the system but memory, threads,
//! clocks and the channel it already holds. So the filter refuses (with `EPERM`, not a kill:
//! a refused call is an error the runtime reports, never a crash) the system calls that open
//! files or sockets, run programs, or change the file system, credentials or other processes.
//! It is a deny list rather than an allow list on purpose: V8, tokio and the C library use a
//! wide and version-dependent set of calls for memory, threads and time, and refusing one of
//! those would break the plugin in ways a host cannot diagnose. Everything that reaches
//! outside the process is on the list.

/// System calls that exist only on x86_64 (newer architectures have only their `*at` forms).
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const REFUSED_X86_64: &[libc::c_long] = &[
    libc::SYS_open,
    libc::SYS_creat,
    libc::SYS_unlink,
    libc::SYS_rename,
    libc::SYS_link,
    libc::SYS_symlink,
    libc::SYS_mkdir,
    libc::SYS_rmdir,
    libc::SYS_mknod,
    libc::SYS_chmod,
    libc::SYS_chown,
    libc::SYS_lchown,
    libc::SYS_fork,
    libc::SYS_vfork,
];
#[cfg(all(target_os = "linux", not(target_arch = "x86_64")))]
const REFUSED_X86_64: &[libc::c_long] = &[];

/// The refused system calls.
#[cfg(target_os = "linux")]
const REFUSED: &[libc::c_long] = &[
    // Files and the file system.
    libc::SYS_openat,
    libc::SYS_openat2,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_truncate,
    libc::SYS_unlinkat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_linkat,
    libc::SYS_symlinkat,
    libc::SYS_mkdirat,
    libc::SYS_mknodat,
    libc::SYS_fchmodat,
    libc::SYS_fchownat,
    libc::SYS_chdir,
    libc::SYS_chroot,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_open_tree,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_unshare,
    libc::SYS_setns,
    // io_uring can open files and sockets without passing these filters.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    // The network.
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_connect,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    // Programs and other processes.
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kill,
    libc::SYS_pidfd_getfd,
    // Credentials and the kernel.
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_capset,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_kexec_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
];

/// Installs the filter on every thread of this process.
#[cfg(target_os = "linux")]
pub(crate) fn install() -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    // (seccompiler supports 64-bit targets only, where a syscall number is an i64.)
    let rules = REFUSED.iter().chain(REFUSED_X86_64).map(|&nr| (nr, Vec::new())).collect();
    let arch = std::env::consts::ARCH.try_into().map_err(|e| format!("{e:?}"))?;
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
        .map_err(|e| e.to_string())?;
    let program: BpfProgram = filter.try_into().map_err(|e: seccompiler::BackendError| e.to_string())?;
    seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
}

/// Elsewhere there is no seccomp: asking for it is an error, not a silent no-op.
#[cfg(not(target_os = "linux"))]
pub(crate) fn install() -> Result<(), String> {
    Err("seccomp filters exist only on Linux".into())
}
