//! The guest kernel: Debian's kernel package unpacked by `dev/setup`, prepared for qemu.
//!
//! `dev/setup` unpacks Debian's 6.12 kernel package (never installed on the host) into
//! `$KEELSON_CACHE/kernels/<debian-arch>/root` (`KEELSON_CACHE` defaults to
//! `/var/cache/keelson`). From it this module prepares, once per kernel release, under
//! `$KEELSON_CACHE/vm/<release>/`:
//! - `vmlinux` (x86_64): the uncompressed ELF kernel, which qemu boots directly through its PVH
//!   entry point (`-kernel vmlinux`, about 5 s faster than the bzImage through SeaBIOS). It is
//!   the bzImage's compressed payload, found through the boot protocol header (`payload_offset`,
//!   `payload_length`, protocol 2.08+) or, failing that, by scanning for a compression magic,
//!   then decompressed (Debian 6.12 uses zstd; xz and gzip are understood too) and checked to
//!   be an x86_64 ELF with a PVH entry note.
//! - `Image` (aarch64): the uncompressed arm64 kernel image, checked by its magic (Debian's
//!   6.12 arm64 `vmlinuz` already is one; a gzip of one is understood too).
//! - `modules/<stamp>/<path>.ko`: decompressed copies of the modules a VM asks for (the init
//!   loads them with `finit_module`; loading `.ko.xz` in the guest is three times slower).
//! - `modinfo.json`: the `.modinfo` of every module of the release (built on first need: reading
//!   all of them takes seconds), for alias lookups.
//!
//! Every cache file is written to a temporary name and renamed, so concurrent test processes
//! never see half a file. A `source` stamp (size and mtime of `vmlinuz`) invalidates the cache
//! when `dev/setup` unpacks a new package of the same release.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::modules::{self, ModInfo, ModuleSet, ModuleSource};

/// Errors of kernel preparation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `dev/setup` has not unpacked a kernel for this architecture.
    #[error("no kernel in {dir} (run dev/setup)")]
    Missing {
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel image is not what we expect.
    #[error("kernel image {path}: {what}")]
    BadImage {
        /// The image.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A module file could not be read.
    #[error("kernel module {path}: {what}")]
    BadModule {
        /// The module file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// Resolving the module closure failed.
    #[error("resolving kernel modules for {release}")]
    Modules {
        /// The kernel release.
        release: String,
        /// The cause.
        #[source]
        source: modules::Error,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io { op, path: path.to_owned(), source }
}

/// A guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64, booted through PVH.
    X86_64,
    /// aarch64, booted as an arm64 `Image`.
    Aarch64,
}

impl Arch {
    /// The architecture this harness runs on, which is the one test binaries are built for.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// Debian's name of the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The qemu system emulator for it.
    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }
}

/// The cache root: `$KEELSON_CACHE`, default `/var/cache/keelson`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("KEELSON_CACHE")
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("/var/cache/keelson"), PathBuf::from)
}

/// An unpacked kernel package and its prepared cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Architecture.
    pub arch: Arch,
    /// Kernel release (`uname -r` in the guest), e.g. `6.12.117+deb12-amd64`.
    pub release: String,
    /// The package's compressed image (`boot/vmlinuz-<release>`).
    pub vmlinuz: PathBuf,
    /// The package's module tree (`lib/modules/<release>`).
    pub modules_dir: PathBuf,
    /// `$KEELSON_CACHE/vm/<release>`.
    pub cache_dir: PathBuf,
}

impl Kernel {
    /// Finds the kernel `dev/setup` unpacked for `arch` under the cache root. Checks only that
    /// the files are there; [`Kernel::boot_image`] does the (cached) preparation.
    pub fn find(arch: Arch) -> Result<Kernel> {
        Kernel::find_in(&cache_root(), arch)
    }

    /// [`Kernel::find`] under an explicit cache root.
    pub fn find_in(cache: &Path, arch: Arch) -> Result<Kernel> {
        let root = cache.join("kernels").join(arch.debian()).join("root");
        let boot = root.join("boot");
        let missing = || Error::Missing { dir: root.clone() };
        let mut releases: Vec<String> = fs::read_dir(&boot)
            .map_err(|_| missing())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_prefix("vmlinuz-").map(str::to_owned))
            .collect();
        releases.sort();
        let release = releases.pop().ok_or_else(missing)?;
        let modules_dir = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| root.join(d).join(&release))
            .find(|d| d.is_dir())
            .ok_or_else(missing)?;
        Ok(Kernel {
            arch,
            vmlinuz: boot.join(format!("vmlinuz-{release}")),
            modules_dir,
            cache_dir: cache.join("vm").join(&release),
            release,
        })
    }

    /// The image qemu boots with `-kernel`: the extracted `vmlinux` (x86_64) or `Image`
    /// (aarch64), prepared on first use.
    pub fn boot_image(&self) -> Result<PathBuf> {
        type Extract = fn(&[u8]) -> Result<Vec<u8>, String>;
        let (name, extract): (&str, Extract) = match self.arch {
            Arch::X86_64 => ("vmlinux", extract_vmlinux),
            Arch::Aarch64 => ("Image", extract_arm64_image),
        };
        let out = self.cache_dir.join(name);
        let stamp = self.source_stamp()?;
        let stamp_path = self.cache_dir.join(format!("{name}.source"));
        if out.is_file() && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp) {
            return Ok(out);
        }
        let packed = fs::read(&self.vmlinuz).map_err(io_err("reading", &self.vmlinuz))?;
        let image = extract(&packed)
            .map_err(|what| Error::BadImage { path: self.vmlinuz.clone(), what })?;
        write_atomic(&out, &image)?;
        write_atomic(&stamp_path, stamp.as_bytes())?;
        tracing::info!(image = %out.display(), bytes = image.len(), "extracted guest kernel");
        Ok(out)
    }

    fn source_stamp(&self) -> Result<String> {
        let meta = fs::metadata(&self.vmlinuz).map_err(io_err("stat", &self.vmlinuz))?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        Ok(format!("{} {mtime}\n", meta.len()))
    }

    /// Resolves `requested` module names to the ordered closure of modules to load, and
    /// returns the decompressed module files (in the cache) in load order.
    pub fn prepare_modules(&self, requested: &[&str]) -> Result<Vec<PreparedModule>> {
        if requested.is_empty() {
            return Ok(Vec::new());
        }
        let mut source = PackageModules::open(self)?;
        let order = modules::closure(&mut source, requested)
            .map_err(|source| Error::Modules { release: self.release.clone(), source })?;
        let mut out = Vec::with_capacity(order.len());
        for m in order {
            let rel = source.files.get(&m.name).cloned().ok_or_else(|| Error::BadModule {
                path: self.modules_dir.join(&m.name),
                what: "resolved but has no file".to_owned(),
            })?;
            let path = source.decompressed(&rel)?;
            out.push(PreparedModule { name: m.name, path });
        }
        Ok(out)
    }
}

/// A module ready to be loaded: an uncompressed `.ko` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedModule {
    /// Normalized module name.
    pub name: String,
    /// The uncompressed module file on the host.
    pub path: PathBuf,
}

/// The modules of an unpacked kernel package, as a [`ModuleSource`].
struct PackageModules<'k> {
    kernel: &'k Kernel,
    /// Normalized name -> path relative to the module dir.
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
    /// Where decompressed modules of this package go.
    modules_cache: PathBuf,
    infos: BTreeMap<String, ModInfo>,
    index: Option<ModuleSet>,
}

const INDEX_VERSION: u32 = 1;

#[derive(serde::Serialize, serde::Deserialize)]
struct IndexFile {
    version: u32,
    source: String,
    set: ModuleSet,
}

impl<'k> PackageModules<'k> {
    fn open(kernel: &'k Kernel) -> Result<Self> {
        let mut files = BTreeMap::new();
        walk_modules(&kernel.modules_dir, Path::new(""), &mut files)?;
        let builtin_path = kernel.modules_dir.join("modules.builtin");
        let builtin = match fs::read_to_string(&builtin_path) {
            Ok(text) => text.lines().filter_map(module_name_of).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(io_err("reading", &builtin_path)(e)),
        };
        // Decompressed copies live in a directory named after the package's stamp, so a new
        // package of the same release never sees stale ones and nothing needs removing while
        // another test process may be reading.
        let stamp = kernel.source_stamp()?;
        let modules_cache = kernel.cache_dir.join("modules").join(stamp.trim().replace(' ', "-"));
        Ok(PackageModules {
            kernel,
            files,
            builtin,
            modules_cache,
            infos: BTreeMap::new(),
            index: None,
        })
    }

    fn read_module(&self, rel: &Path) -> Result<Vec<u8>> {
        let path = self.kernel.modules_dir.join(rel);
        let raw = fs::read(&path).map_err(io_err("reading", &path))?;
        let bad = |what: String| Error::BadModule { path: path.clone(), what };
        if raw.starts_with(XZ_MAGIC) {
            xz_first_stream(&raw).map_err(bad)
        } else if raw.starts_with(ZSTD_MAGIC) {
            zstd::stream::decode_all(&raw[..]).map_err(|e| bad(format!("zstd: {e}")))
        } else if raw.starts_with(GZIP_MAGIC) {
            let mut out = Vec::with_capacity(raw.len() * 4);
            flate2::read::GzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .map_err(|e| bad(format!("gzip: {e}")))?;
            Ok(out)
        } else {
            Ok(raw)
        }
    }

    fn info_of(&self, name: &str, rel: &Path) -> Result<ModInfo> {
        let data = self.read_module(rel)?;
        let section = modinfo_section(&data)
            .map_err(|what| Error::BadModule { path: self.kernel.modules_dir.join(rel), what })?;
        Ok(ModInfo::parse(name, section))
    }

    /// The decompressed copy of a module in the cache, written on first use.
    fn decompressed(&self, rel: &Path) -> Result<PathBuf> {
        let rel_str = rel.to_string_lossy();
        let plain =
            rel_str.trim_end_matches(".xz").trim_end_matches(".zst").trim_end_matches(".gz");
        let out = self.modules_cache.join(plain);
        if !out.is_file() {
            write_atomic(&out, &self.read_module(rel)?)?;
        }
        Ok(out)
    }

    /// The `.modinfo` of every module, from the cache or read now (and cached).
    fn index(&mut self) -> Result<&ModuleSet> {
        if self.index.is_none() {
            let path = self.kernel.cache_dir.join("modinfo.json");
            let stamp = self.kernel.source_stamp()?;
            let cached = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<IndexFile>(&b).ok())
                .filter(|f| f.version == INDEX_VERSION && f.source == stamp);
            let set = match cached {
                Some(f) => f.set,
                None => {
                    let started = std::time::Instant::now();
                    let mut set =
                        ModuleSet { builtin: self.builtin.clone(), ..ModuleSet::default() };
                    for (name, rel) in &self.files {
                        set.insert(self.info_of(name, rel)?);
                    }
                    let file = IndexFile { version: INDEX_VERSION, source: stamp, set };
                    let json = serde_json::to_vec(&file).map_err(|e| Error::Io {
                        op: "encoding",
                        path: path.clone(),
                        source: io::Error::other(e),
                    })?;
                    write_atomic(&path, &json)?;
                    tracing::info!(
                        modules = file.set.modules.len(),
                        secs = started.elapsed().as_secs_f32(),
                        "indexed kernel modules"
                    );
                    file.set
                }
            };
            self.index = Some(set);
        }
        Ok(self.index.get_or_insert_with(ModuleSet::default))
    }
}

fn boxed(e: Error) -> modules::Error {
    let name = match &e {
        Error::BadModule { path, .. } | Error::Io { path, .. } => path.display().to_string(),
        _ => String::new(),
    };
    modules::Error::Source { name, source: Box::new(e) }
}

impl ModuleSource for PackageModules<'_> {
    fn module(&mut self, name: &str) -> modules::Result<Option<ModInfo>> {
        if let Some(info) = self.infos.get(name) {
            return Ok(Some(info.clone()));
        }
        let Some(rel) = self.files.get(name).cloned() else { return Ok(None) };
        let info = match &self.index {
            Some(set) => set.modules.get(name).cloned(),
            None => None,
        };
        let info = match info {
            Some(info) => info,
            None => self.info_of(name, &rel).map_err(boxed)?,
        };
        self.infos.insert(name.to_owned(), info.clone());
        Ok(Some(info))
    }

    fn is_builtin(&mut self, name: &str) -> modules::Result<bool> {
        Ok(self.builtin.contains(name))
    }

    fn providers(&mut self, name: &str) -> modules::Result<Vec<String>> {
        self.index().map_err(boxed)?.clone().providers(name)
    }
}

/// Collects `name -> relative path` of every module file under `dir`.
fn walk_modules(base: &Path, rel: &Path, out: &mut BTreeMap<String, PathBuf>) -> Result<()> {
    let dir = base.join(rel);
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err("listing", &dir))?
        .collect::<io::Result<_>>()
        .map_err(io_err("listing", &dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let child = rel.join(e.file_name());
        let ft = e.file_type().map_err(io_err("stat", &e.path()))?;
        if ft.is_dir() {
            walk_modules(base, &child, out)?;
        } else if let Some(name) = child.to_str().and_then(module_name_of) {
            out.entry(name).or_insert(child);
        }
    }
    Ok(())
}

/// `kernel/crypto/crc32c-intel.ko.xz` -> `crc32c_intel`; `None` for a non-module file.
fn module_name_of(path: &str) -> Option<String> {
    let base = path.rsplit('/').next()?;
    let stem = [".ko.xz", ".ko.zst", ".ko.gz", ".ko"].iter().find_map(|s| base.strip_suffix(s))?;
    Some(modules::normalize(stem))
}

/// The content of the `.modinfo` section of an ELF module.
pub fn modinfo_section(elf: &[u8]) -> Result<&[u8], String> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(elf).map_err(|e| format!("not an ELF object: {e}"))?;
    let section = file.section_by_name(".modinfo").ok_or("no .modinfo section")?;
    section.data().map_err(|e| format!(".modinfo: {e}"))
}

const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];

/// A compression format of a kernel payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// zstd (Debian's 6.12 x86_64 kernels).
    Zstd,
    /// xz.
    Xz,
    /// gzip.
    Gzip,
}

impl Compression {
    fn detect(data: &[u8]) -> Option<Compression> {
        if data.starts_with(ZSTD_MAGIC) {
            Some(Compression::Zstd)
        } else if data.starts_with(XZ_MAGIC) {
            Some(Compression::Xz)
        } else if data.starts_with(GZIP_MAGIC) {
            Some(Compression::Gzip)
        } else {
            None
        }
    }

    /// Decompresses the first stream in `data`, ignoring what follows it (the bzImage payload
    /// ends with the 4-byte uncompressed size).
    fn decompress(self, data: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(data.len() * 4);
        let res = match self {
            Compression::Zstd => zstd::stream::read::Decoder::new(data)
                .map_err(|e| e.to_string())?
                .single_frame()
                .read_to_end(&mut out),
            Compression::Xz => return xz_first_stream(data),
            Compression::Gzip => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
        };
        res.map_err(|e| format!("{self:?} decompression: {e}"))?;
        Ok(out)
    }
}

/// Decompresses the first xz stream of `data` and ignores what follows (`XzDecoder` treats
/// trailing bytes as a corrupt stream).
fn xz_first_stream(data: &[u8]) -> Result<Vec<u8>, String> {
    use xz2::stream::{Action, Status, Stream};
    let mut stream = Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| format!("xz: {e}"))?;
    let mut out = Vec::with_capacity(data.len() * 4);
    loop {
        let offset = usize::try_from(stream.total_in()).map_err(|e| e.to_string())?;
        let input = &data[offset.min(data.len())..];
        if out.capacity() - out.len() < 1 << 16 {
            out.reserve(out.capacity().max(1 << 20));
        }
        let before = (stream.total_in(), stream.total_out());
        let action = if input.is_empty() { Action::Finish } else { Action::Run };
        let status = stream.process_vec(input, &mut out, action).map_err(|e| format!("xz: {e}"))?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
        if input.is_empty() && before == (stream.total_in(), stream.total_out()) {
            return Err("xz: truncated stream".to_owned());
        }
    }
}

fn le_u16(data: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(data: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
}

/// Where the compressed kernel inside a bzImage starts and ends, from the boot protocol
/// header (`Documentation/arch/x86/boot.rst`); `None` if the header does not say.
pub fn bzimage_payload(data: &[u8]) -> Option<&[u8]> {
    if data.get(0x202..0x206)? != b"HdrS" || le_u16(data, 0x206)? < 0x208 {
        return None;
    }
    let setup_sects = match *data.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let protected_mode = (setup_sects + 1) * 512;
    let offset = protected_mode + usize::try_from(le_u32(data, 0x248)?).ok()?;
    let len = usize::try_from(le_u32(data, 0x24c)?).ok()?;
    data.get(offset..offset.checked_add(len)?)
}

/// Finds the compressed kernel in a bzImage (header first, then a scan for a known magic) and
/// returns it with its compression.
pub fn find_payload(data: &[u8]) -> Option<(Compression, &[u8])> {
    if let Some(payload) = bzimage_payload(data) {
        if let Some(c) = Compression::detect(payload) {
            return Some((c, payload));
        }
    }
    (0..data.len()).find_map(|i| Compression::detect(&data[i..]).map(|c| (c, &data[i..])))
}

/// Extracts the uncompressed, PVH-bootable ELF `vmlinux` from an x86 bzImage.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>, String> {
    let (compression, payload) =
        find_payload(bzimage).ok_or("no compressed payload (zstd, xz or gzip) found")?;
    let elf = compression.decompress(payload)?;
    check_pvh_elf(&elf)?;
    Ok(elf)
}

/// Checks that `elf` is an x86_64 ELF executable with a PVH entry note
/// (`XEN_ELFNOTE_PHYS32_ENTRY`, type 18, owner `Xen`), which qemu needs to boot it directly.
pub fn check_pvh_elf(elf: &[u8]) -> Result<(), String> {
    use object::elf::{FileHeader64, EM_X86_64, PT_NOTE};
    use object::read::elf::{FileHeader, ProgramHeader};
    use object::LittleEndian;
    if !elf.starts_with(b"\x7fELF") {
        return Err("decompressed payload is not an ELF file".to_owned());
    }
    let header =
        FileHeader64::<LittleEndian>::parse(elf).map_err(|e| format!("ELF header: {e}"))?;
    let endian = header.endian().map_err(|e| format!("ELF header: {e}"))?;
    if header.e_machine(endian) != EM_X86_64 {
        return Err(format!("ELF machine {} is not x86_64", header.e_machine(endian)));
    }
    let phdrs =
        header.program_headers(endian, elf).map_err(|e| format!("ELF program headers: {e}"))?;
    for ph in phdrs.iter().filter(|ph| ph.p_type(endian) == PT_NOTE) {
        let Ok(Some(mut notes)) = ph.notes(endian, elf) else { continue };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian).0 == 18 {
                return Ok(());
            }
        }
    }
    Err("no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): qemu cannot boot it directly".to_owned())
}

/// Extracts the arm64 `Image` from Debian's arm64 `vmlinuz` (plain in 6.12, or a gzip of it).
pub fn extract_arm64_image(vmlinuz: &[u8]) -> Result<Vec<u8>, String> {
    let image = match Compression::detect(vmlinuz) {
        Some(c) => c.decompress(vmlinuz)?,
        None => vmlinuz.to_vec(),
    };
    if image.get(0x38..0x3c) != Some(b"ARM\x64") {
        return Err("not an arm64 Image (no ARM\\x64 magic at 0x38)".to_owned());
    }
    Ok(image)
}

/// Writes `data` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(io_err("creating a temporary file in", dir))?;
    tmp.write_all(data).map_err(io_err("writing", tmp.path()))?;
    // Readable by every user of the machine, like the rest of the cache.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
        .map_err(io_err("setting permissions of", tmp.path()))?;
    tmp.persist(path).map_err(|e| io_err("renaming into", path)(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal x86_64 ELF executable with one PT_NOTE segment holding `note`.
    fn fake_elf(note_name: &[u8], note_type: u32) -> Vec<u8> {
        let mut note = Vec::new();
        note.extend_from_slice(&((note_name.len() + 1) as u32).to_le_bytes());
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&note_type.to_le_bytes());
        note.extend_from_slice(note_name);
        note.push(0);
        while note.len() % 4 != 0 {
            note.push(0);
        }
        note.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[6] = 1; // version
        elf[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        elf[20..24].copy_from_slice(&1u32.to_le_bytes());
        elf[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        elf[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        elf[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        elf[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 64;
        elf[ph..ph + 4].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        elf[ph + 8..ph + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        elf[ph + 32..ph + 40].copy_from_slice(&(note.len() as u64).to_le_bytes()); // p_filesz
        elf[ph + 48..ph + 56].copy_from_slice(&4u64.to_le_bytes()); // p_align
        elf.extend_from_slice(&note);
        elf
    }

    fn zstd_of(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).expect("zstd")
    }

    /// A bzImage-shaped file: setup sectors with a 2.15 header pointing at `payload` (plus the
    /// 4-byte size trailer the kernel build appends), padded with junk.
    fn fake_bzimage(payload: &[u8], header: bool) -> Vec<u8> {
        let setup_sects = 3u8;
        let pm = (usize::from(setup_sects) + 1) * 512;
        let mut img = vec![0u8; pm];
        let junk = b"decompressor code \x28\xb5\x2f not quite a magic";
        img.extend_from_slice(junk);
        let offset = junk.len();
        img.extend_from_slice(payload);
        img.extend_from_slice(&12345u32.to_le_bytes());
        img.extend_from_slice(&[0x90; 100]);
        if header {
            img[0x1f1] = setup_sects;
            img[0x202..0x206].copy_from_slice(b"HdrS");
            img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
            img[0x248..0x24c].copy_from_slice(&(offset as u32).to_le_bytes());
            img[0x24c..0x250].copy_from_slice(&(payload.len() as u32 + 4).to_le_bytes());
        }
        img
    }

    #[test]
    fn bzimage_payload_is_found_through_the_boot_header() {
        let elf = fake_elf(b"Xen", 18);
        let img = fake_bzimage(&zstd_of(&elf), true);
        let (c, payload) = find_payload(&img).expect("payload");
        assert_eq!(c, Compression::Zstd);
        assert!(payload.starts_with(ZSTD_MAGIC));
        assert_eq!(extract_vmlinux(&img).expect("extract"), elf);
    }

    #[test]
    fn bzimage_payload_is_found_by_magic_without_a_header() {
        let elf = fake_elf(b"Xen", 18);
        let mut xz = Vec::new();
        xz2::read::XzEncoder::new(&elf[..], 1).read_to_end(&mut xz).expect("xz");
        let img = fake_bzimage(&xz, false);
        assert!(bzimage_payload(&img).is_none());
        assert_eq!(find_payload(&img).expect("payload").0, Compression::Xz);
        assert_eq!(extract_vmlinux(&img).expect("extract"), elf);
    }

    #[test]
    fn extracted_kernel_without_pvh_note_or_elf_is_rejected() {
        let no_pvh = fake_bzimage(&zstd_of(&fake_elf(b"Linux", 1)), true);
        let err = extract_vmlinux(&no_pvh).expect_err("no PVH note");
        assert!(err.contains("PVH"), "{err}");
        let not_elf = fake_bzimage(&zstd_of(b"just some bytes, not an ELF"), true);
        let err = extract_vmlinux(&not_elf).expect_err("not ELF");
        assert!(err.contains("not an ELF"), "{err}");
        let nothing = vec![0u8; 4096];
        assert!(extract_vmlinux(&nothing).is_err());
    }

    #[test]
    fn arm64_image_is_gunzipped_and_checked() {
        let mut image = vec![0u8; 128];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        let mut gz = Vec::new();
        flate2::read::GzEncoder::new(&image[..], flate2::Compression::fast())
            .read_to_end(&mut gz)
            .expect("gzip");
        assert_eq!(extract_arm64_image(&gz).expect("Image"), image);
        assert!(extract_arm64_image(&[0u8; 128]).is_err());
    }

    #[test]
    fn module_names_come_from_file_names() {
        assert_eq!(
            module_name_of("kernel/arch/x86/crypto/crc32c-intel.ko.xz").as_deref(),
            Some("crc32c_intel")
        );
        assert_eq!(module_name_of("kernel/fs/overlayfs/overlay.ko").as_deref(), Some("overlay"));
        assert_eq!(module_name_of("modules.order"), None);
    }

    #[test]
    fn missing_kernel_cache_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Kernel::find_in(dir.path(), Arch::X86_64).expect_err("nothing there");
        assert!(err.to_string().contains("run dev/setup"), "{err}");
    }
}
