//! The compiled seccomp filter a bundle may carry, and loading it.
//!
//! The runtime compiles a container's seccomp profile once per distinct profile and writes the
//! program (an array of `struct sock_filter`, native endian, as libseccomp exports it) to
//! `<bundle>/seccomp.bpf` ([`BUNDLE_FILTER`]); the shim's executor loads it with
//! [`load`] as the last step before `execve`, for the container's process and for each exec.

use std::io;

/// The compiled filter in a bundle.
pub const BUNDLE_FILTER: &str = "seccomp.bpf";

/// One instruction (`struct sock_filter`): `u16 code, u8 jt, u8 jf, u32 k`.
pub const INSN_LEN: usize = 8;

/// The kernel's limit on a program's length (`BPF_MAXINSNS`).
pub const MAX_INSNS: usize = 4096;

/// A program checked for shape, ready to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program(Vec<libc::sock_filter>);

impl Program {
    /// Parses exported program bytes: a whole number of instructions, 1 to [`MAX_INSNS`].
    pub fn parse(bytes: &[u8]) -> io::Result<Self> {
        if bytes.is_empty() || bytes.len() % INSN_LEN != 0 || bytes.len() / INSN_LEN > MAX_INSNS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} bytes are not a seccomp program", bytes.len()),
            ));
        }
        let insns = bytes
            .chunks_exact(INSN_LEN)
            .map(|i| libc::sock_filter {
                code: u16::from_ne_bytes([i[0], i[1]]),
                jt: i[2],
                jf: i[3],
                k: u32::from_ne_bytes([i[4], i[5], i[6], i[7]]),
            })
            .collect();
        Ok(Self(insns))
    }

    /// Number of instructions.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a parsed program; for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Installs the program on the calling thread (`seccomp(SECCOMP_SET_MODE_FILTER)`, no
    /// flags). Needs `no_new_privs` or `CAP_SYS_ADMIN`; the kernel answers `EACCES` otherwise.
    pub fn load(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            // parse() bounds the length by MAX_INSNS.
            len: self.0.len() as u16,
            filter: self.0.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` points at `len` initialised instructions that outlive the call; the
        // kernel copies the program before returning.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_must_be_whole_instructions_within_the_kernel_limit() {
        assert!(Program::parse(&[]).is_err());
        assert!(Program::parse(&[0; 12]).is_err());
        assert!(Program::parse(&vec![0; INSN_LEN * (MAX_INSNS + 1)]).is_err());
        let ret_allow = [0x06, 0x00, 0, 0, 0x00, 0x00, 0xff, 0x7f];
        let p = Program::parse(&ret_allow).expect("one instruction");
        assert_eq!(p.len(), 1);
        assert_eq!(p.0[0].code, 0x06);
        assert_eq!(p.0[0].k, 0x7fff_0000);
    }

    #[test]
    fn loading_without_no_new_privs_or_sys_admin_is_refused_not_ignored() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("SKIP: as root CAP_SYS_ADMIN lets the load succeed; the privileged tier covers loading");
            return;
        }
        let ret_allow = [0x06, 0x00, 0, 0, 0x00, 0x00, 0xff, 0x7f];
        let p = Program::parse(&ret_allow).expect("one instruction");
        let err = std::thread::spawn(move || p.load()).join().expect("thread");
        assert_eq!(err.expect_err("refused").raw_os_error(), Some(libc::EACCES));
    }
}
