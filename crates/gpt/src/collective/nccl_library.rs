//! Finding NCCL for the (coming) NCCL backend. cudarc loads NCCL by the names it knows
//! (`libnccl.so`, `libnccl.so.13`, `.12`, …) but not by NCCL's own soname, `libnccl.so.2`, which is
//! the only file the pip wheels (`nvidia-nccl-cu12`, `nvidia-nccl-cu13`) and most packages ship. So
//! pipe looks for `libnccl.so.2` itself (`PIPE_NCCL_LIB`, then the loader's search path), and when
//! only that name exists it links it as `libnccl.so` in a folder of its own and says to put that
//! folder on `LD_LIBRARY_PATH` (the dynamic loader reads that variable when a process starts).

use anyhow::{Context, Result, bail};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// How to get NCCL, for the messages.
pub const INSTALL_NCCL: &str = "install NCCL, e.g. `pip install nvidia-nccl-cu12` (CUDA 12) or `pip install nvidia-nccl-cu13` (CUDA 13), and point pipe at it: `export PIPE_NCCL_LIB=$(python3 -c 'import nvidia.nccl as n; print(n.__path__[0])')/lib/libnccl.so.2`";

/// Where NCCL is.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// cudarc will load it as it is (`libnccl.so` is on the loader's path).
    Loadable,
    /// Only `libnccl.so.2` exists (this file): [`link_for_cudarc`] makes it loadable.
    Soname2(PathBuf),
}

/// Finds NCCL: `PIPE_NCCL_LIB` (the library file, or a folder with `libnccl.so.2`), else
/// `libnccl.so` or `libnccl.so.2` on the dynamic loader's path.
pub fn find(pipe_nccl_lib: Option<&str>) -> Result<Found> {
    if let Some(given) = pipe_nccl_lib {
        let p = Path::new(given);
        let file = if p.is_dir() {
            p.join("libnccl.so.2")
        } else {
            p.to_path_buf()
        };
        if !file.is_file() {
            bail!(
                "PIPE_NCCL_LIB={given}: there is no {} ({INSTALL_NCCL})",
                file.display()
            );
        }
        if !loads(&file.display().to_string()) {
            bail!(
                "PIPE_NCCL_LIB={given}: {} exists but does not load as a shared library (is it NCCL for this machine's CUDA?)",
                file.display()
            );
        }
        let file = file
            .canonicalize()
            .with_context(|| format!("PIPE_NCCL_LIB={given}: finding {}", file.display()))?;
        return Ok(Found::Soname2(file));
    }
    if loads("libnccl.so") {
        return Ok(Found::Loadable);
    }
    if loads("libnccl.so.2") {
        // The loader found it by its soname: its folder is on LD_LIBRARY_PATH or in ld.so.cache.
        let Some(path) = loaded_path("libnccl.so.2") else {
            bail!(
                "libnccl.so.2 loads, but its file could not be found: give its path with PIPE_NCCL_LIB"
            );
        };
        return Ok(Found::Soname2(path));
    }
    bail!("NCCL (libnccl.so.2) was not found: {INSTALL_NCCL}")
}

/// Links `lib` as `libnccl.so` in `dir` (made if needed) and returns the instruction the user
/// follows, unless `dir` is on `ld_library_path` already.
pub fn link_for_cudarc(lib: &Path, dir: &Path, ld_library_path: &str) -> Result<Option<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A new link renamed over the old one: ranks on one machine may do this at once.
    let link = dir.join("libnccl.so");
    let temp = dir.join(format!(".libnccl.so.{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(lib, &temp)
        .and_then(|()| std::fs::rename(&temp, &link))
        .with_context(|| format!("linking {} as {}", lib.display(), link.display()))?;
    if std::env::split_paths(ld_library_path).any(|p| p == dir) {
        return Ok(None);
    }
    Ok(Some(format!(
        "NCCL is at {}, which cudarc loads only as libnccl.so: pipe linked it as {}; run with `export LD_LIBRARY_PATH={}:$LD_LIBRARY_PATH`",
        lib.display(),
        link.display(),
        dir.display()
    )))
}

fn loads(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is NUL-terminated and outlives the call; the handle is closed at once.
    unsafe {
        let h = libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
        if h.is_null() {
            return false;
        }
        libc::dlclose(h);
    }
    true
}

/// The file the loader maps for `name`, from /proc/self/maps while it is open.
fn loaded_path(name: &str) -> Option<PathBuf> {
    let c = CString::new(name).ok()?;
    // SAFETY: as in `loads`.
    let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL) };
    if h.is_null() {
        return None;
    }
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    // SAFETY: `h` came from dlopen above.
    unsafe { libc::dlclose(h) };
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with(name))
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without NCCL on this machine, the error names both pip wheels and PIPE_NCCL_LIB; a
    /// PIPE_NCCL_LIB that is not a library is an error naming it.
    #[test]
    fn missing_nccl_names_the_wheels_and_the_variable() {
        let dir = std::env::temp_dir().join(format!("pipe-nccl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = find(Some(dir.to_str().unwrap())).unwrap_err().to_string();
        assert!(
            err.contains("libnccl.so.2") && err.contains("nvidia-nccl-cu12"),
            "{err}"
        );
        let fake = dir.join("libnccl.so.2");
        std::fs::write(&fake, b"not a library").unwrap();
        let err = find(Some(dir.to_str().unwrap())).unwrap_err().to_string();
        assert!(err.contains("does not load as a shared library"), "{err}");
        if !loads("libnccl.so") && !loads("libnccl.so.2") {
            let err = find(None).unwrap_err().to_string();
            assert!(
                err.contains("nvidia-nccl-cu12")
                    && err.contains("nvidia-nccl-cu13")
                    && err.contains("PIPE_NCCL_LIB"),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The link cudarc can load, and the instruction only when its folder is not on the path.
    #[test]
    fn a_soname_2_library_is_linked_as_libnccl_so() {
        let dir = std::env::temp_dir().join(format!("pipe-nccl-link-{}", std::process::id()));
        let lib = dir.join("wheel/libnccl.so.2");
        std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
        std::fs::write(&lib, b"x").unwrap();
        let links = dir.join("links");
        let said = link_for_cudarc(&lib, &links, "/usr/lib").unwrap().unwrap();
        assert_eq!(std::fs::read_link(links.join("libnccl.so")).unwrap(), lib);
        assert!(
            said.contains(&format!("export LD_LIBRARY_PATH={}:", links.display())),
            "{said}"
        );
        let on_path = format!("/usr/lib:{}", links.display());
        assert_eq!(link_for_cudarc(&lib, &links, &on_path).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
