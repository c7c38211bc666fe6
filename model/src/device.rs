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

use burn::tensor::Device;

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

/// Restarts the peak that [`peak_rss_mib`] reads (Linux; a no-op elsewhere).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn cuda_index(spec: &str, rest: &str) -> Result<usize> {
    rest.parse::<usize>().map_err(|_| Error::Device(format!("{spec:?}: expected cuda:N with N a GPU index")))
}

/// Parse `cpu`, `flex`, `cuda:N`, `tch`, `tch:cpu` or `tch:cuda:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec_trim = spec.trim();
    match spec_trim {
        "cpu" | "flex" => return Ok(Device::flex()),
        "tch" | "tch:cpu" => return tch_cpu(spec),
        _ => {}
    }
    if let Some(rest) = spec_trim.strip_prefix("tch:cuda:") {
        let index = cuda_index(spec, rest)?;
        return tch_cuda(spec, index);
    }
    if let Some(rest) = spec_trim.strip_prefix("cuda:") {
        let index = cuda_index(spec, rest)?;
        return cuda(spec, index);
    }
    Err(Error::Device(format!("unknown device {spec:?}; expected cpu, cuda:N, tch:cpu or tch:cuda:N")))
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
}
