//! Map a device name to a burn [`Device`]. The model code names no backend; Cargo features
//! decide which backends are compiled in (`flex` always; `cuda` and `tch` optionally).
//!
//! | name | backend | feature |
//! |---|---|---|
//! | `cpu`, `flex` | burn-flex, pure Rust | always |
//! | `cuda:N` | burn-cuda (CubeCL), or LibTorch CUDA when only `tch` is enabled | `cuda` / `tch` |
//! | `tch`, `tch:cpu` | LibTorch CPU | `tch` |
//! | `tch:cuda:N` | LibTorch CUDA | `tch` |
//!
//! Training wraps the device in autodiff: `parse_device("cpu")?.autodiff()`.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Peak resident memory of this process (Linux `VmHWM`), in MiB; NaN where `/proc` is missing.
/// The host side of a device's memory: what benchmarks and `train` report.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The C library setting under which this process keeps the memory its tensors free, instead of
/// handing it back to the kernel: no `mmap` for large blocks and no trimming of the heap's top
/// (glibc tunables). With glibc's defaults every block over 32 MiB is mapped on allocation and
/// unmapped when freed, so each training step's large activations and gradients came back as
/// fresh pages that the kernel zeroed on first touch (13% of MARN's step on the CPU). The heap
/// then stays at its peak between steps; the peak itself moves by a few percent.
pub const RETAINING_MALLOC: &str = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736";

/// The variable that opts out of [`RETAINING_MALLOC`] (`system`); a restarted process carries
/// it too (`retain`), so it never restarts twice.
pub const MALLOC_VARIABLE: &str = "MARNFLOW_MALLOC";

/// Where the C library is glibc, restarts this process (`exec`, same arguments and environment)
/// with [`RETAINING_MALLOC`] added to `GLIBC_TUNABLES`, which glibc reads only at start-up.
/// Returns without restarting when the setting is already there, when `MARNFLOW_MALLOC=system`
/// asks for the C library's defaults, or where the restart fails (a warning says why).
pub fn restart_with_retaining_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
        if std::env::var_os(MALLOC_VARIABLE).is_some() || tunables.contains("glibc.malloc.mmap_max") {
            return;
        }
        let Ok(exe) = std::env::current_exe() else { return };
        let tunables =
            if tunables.is_empty() { RETAINING_MALLOC.to_string() } else { format!("{tunables}:{RETAINING_MALLOC}") };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(name) = args.next() {
            command.arg0(name);
        }
        // `exec` returns only when it failed.
        let error = command.args(args).env("GLIBC_TUNABLES", tunables).env(MALLOC_VARIABLE, "retain").exec();
        eprintln!("warning: could not restart with {RETAINING_MALLOC} ({error}); the C library's defaults apply");
    }
}

/// Restarts the peak that [`peak_rss_mib`] reads (Linux; a no-op elsewhere).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A device by name, parsed once from configuration: `cpu` (alias `flex`), `cuda:N`, `tch:cpu`
/// (alias `tch`) or `tch:cuda:N`. Whether this build has the backend is checked by
/// [`DeviceSpec::device`], so a config naming a GPU parses everywhere and fails where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// burn-flex, pure Rust.
    #[default]
    Cpu,
    /// GPU `N`: burn-cuda, or LibTorch CUDA when only `tch` is built.
    Cuda(usize),
    /// LibTorch on the CPU.
    TchCpu,
    /// LibTorch CUDA, GPU `N`.
    TchCuda(usize),
}

impl DeviceSpec {
    /// The burn device, or an error naming the Cargo feature this build lacks.
    pub fn device(self) -> Result<Device> {
        let spec = self.to_string();
        match self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            DeviceSpec::Cuda(index) => cuda(&spec, index),
            DeviceSpec::TchCpu => tch_cpu(&spec),
            DeviceSpec::TchCuda(index) => tch_cuda(&spec, index),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceSpec::TchCpu => f.write_str("tch:cpu"),
            DeviceSpec::TchCuda(i) => write!(f, "tch:cuda:{i}"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;
    fn from_str(spec: &str) -> Result<Self> {
        let index = |rest: &str| {
            rest.parse::<usize>().map_err(|_| Error::Device(format!("{spec:?}: expected cuda:N with N a GPU index")))
        };
        let s = spec.trim();
        match s {
            "cpu" | "flex" => Ok(DeviceSpec::Cpu),
            "tch" | "tch:cpu" => Ok(DeviceSpec::TchCpu),
            _ => {
                if let Some(rest) = s.strip_prefix("tch:cuda:") {
                    Ok(DeviceSpec::TchCuda(index(rest)?))
                } else if let Some(rest) = s.strip_prefix("cuda:") {
                    Ok(DeviceSpec::Cuda(index(rest)?))
                } else {
                    Err(Error::Device(format!("unknown device {spec:?}; expected cpu, cuda:N, tch:cpu or tch:cuda:N")))
                }
            }
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

/// Parse `cpu`, `flex`, `cuda:N`, `tch`, `tch:cpu` or `tch:cuda:N` into a device of this build.
pub fn parse_device(spec: &str) -> Result<Device> {
    spec.parse::<DeviceSpec>()?.device()
}

#[cfg(feature = "cuda")]
fn cuda(_spec: &str, index: usize) -> Result<Device> {
    Ok(Device::cuda(index))
}

#[cfg(all(not(feature = "cuda"), feature = "tch"))]
fn cuda(spec: &str, index: usize) -> Result<Device> {
    tch_cuda(spec, index)
}

#[cfg(all(not(feature = "cuda"), not(feature = "tch")))]
fn cuda(spec: &str, _index: usize) -> Result<Device> {
    Err(Error::Device(format!(
        "{spec:?}: this build has no GPU backend; rebuild with `--features cuda` or `--features tch`"
    )))
}

#[cfg(feature = "tch")]
#[allow(deprecated)]
fn tch_cuda(_spec: &str, index: usize) -> Result<Device> {
    Ok(Device::libtorch_cuda(index))
}

#[cfg(not(feature = "tch"))]
fn tch_cuda(spec: &str, _index: usize) -> Result<Device> {
    Err(Error::Device(format!("{spec:?}: this build has no LibTorch backend; rebuild with `--features tch`")))
}

#[cfg(feature = "tch")]
#[allow(deprecated)]
fn tch_cpu(_spec: &str) -> Result<Device> {
    Ok(Device::libtorch())
}

#[cfg(not(feature = "tch"))]
fn tch_cpu(spec: &str) -> Result<Device> {
    Err(Error::Device(format!("{spec:?}: this build has no LibTorch backend; rebuild with `--features tch`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_parses_and_unknown_names_are_errors() {
        assert!(parse_device("cpu").is_ok());
        assert!(parse_device("flex").is_ok());
        assert!(parse_device("tpu").is_err());
        assert!(parse_device("cuda:x").is_err());
        #[cfg(not(any(feature = "cuda", feature = "tch")))]
        assert!(parse_device("cuda:0").unwrap_err().to_string().contains("--features cuda"));
    }

    #[test]
    fn a_device_spec_round_trips_through_its_name() {
        for name in ["cpu", "cuda:0", "cuda:3", "tch:cpu", "tch:cuda:1"] {
            let spec: DeviceSpec = name.parse().unwrap();
            assert_eq!(spec.to_string(), name);
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), spec);
        }
        assert_eq!("flex".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("tch".parse::<DeviceSpec>().unwrap(), DeviceSpec::TchCpu);
        let err = serde_json::from_str::<DeviceSpec>("\"gpu\"").unwrap_err().to_string();
        assert!(err.contains("unknown device"), "{err}");
    }
}
