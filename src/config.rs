//! Configuration: defaults, then a TOML file (`--config`), then `CONFER_*` environment
//! variables. Every setting has a default so that `confer serve` runs with none.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the engine binds its media (RTP) sockets to.
    pub media_ip: IpAddr,
    /// First RTP port of the range (even).
    pub rtp_port_min: u16,
    /// Last RTP port of the range.
    pub rtp_port_max: u16,
    /// The engine's frame clock, in ms (10 or 20).
    pub frame_ms: u32,
    /// Media worker threads (0 = one per core).
    pub media_workers: usize,
    /// Real-time (`SCHED_FIFO`) priority of the media workers and their sender threads,
    /// 1..=99; 0 keeps the normal scheduler. Where the system does not permit it (no
    /// `CAP_SYS_NICE` or `RLIMIT_RTPRIO`), they run at normal priority and say so once.
    pub realtime_priority: u8,
    /// Data directory (database, recordings).
    pub data_dir: PathBuf,
    /// Address of the HTTP control API (`CONFER_HTTP_LISTEN`, default `127.0.0.1:8080`).
    /// Port 0 takes a free port; the ready line says which.
    pub http_listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            media_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            rtp_port_min: 20_000,
            rtp_port_max: 20_999,
            frame_ms: 20,
            media_workers: 0,
            realtime_priority: 10,
            data_dir: PathBuf::from("confer-data"),
            http_listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
        }
    }
}

impl Config {
    /// Loads the defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                Self::from_toml(&text)
                    .with_context(|| format!("in config file {}", path.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML document (unknown keys are errors).
    pub fn from_toml(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Overrides settings from `CONFER_<SETTING>` variables (upper case).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        fn parse<T: std::str::FromStr>(key: &str, v: String) -> anyhow::Result<T>
        where
            T::Err: std::fmt::Display,
        {
            v.parse()
                .map_err(|e| anyhow::anyhow!("environment variable {key}={v:?}: {e}"))
        }
        if let Some(v) = get("CONFER_MEDIA_IP") {
            self.media_ip = parse("CONFER_MEDIA_IP", v)?;
        }
        if let Some(v) = get("CONFER_RTP_PORT_MIN") {
            self.rtp_port_min = parse("CONFER_RTP_PORT_MIN", v)?;
        }
        if let Some(v) = get("CONFER_RTP_PORT_MAX") {
            self.rtp_port_max = parse("CONFER_RTP_PORT_MAX", v)?;
        }
        if let Some(v) = get("CONFER_FRAME_MS") {
            self.frame_ms = parse("CONFER_FRAME_MS", v)?;
        }
        if let Some(v) = get("CONFER_MEDIA_WORKERS") {
            self.media_workers = parse("CONFER_MEDIA_WORKERS", v)?;
        }
        if let Some(v) = get("CONFER_REALTIME_PRIORITY") {
            self.realtime_priority = parse("CONFER_REALTIME_PRIORITY", v)?;
        }
        if let Some(v) = get("CONFER_DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("CONFER_HTTP_LISTEN") {
            self.http_listen = parse("CONFER_HTTP_LISTEN", v)?;
        }
        Ok(())
    }

    /// Rejects settings that cannot work, saying which and why.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.frame_ms != 10 && self.frame_ms != 20 {
            bail!("frame_ms must be 10 or 20, not {}", self.frame_ms);
        }
        if self.rtp_port_min > self.rtp_port_max {
            bail!(
                "rtp_port_min ({}) is above rtp_port_max ({})",
                self.rtp_port_min,
                self.rtp_port_max
            );
        }
        if self.realtime_priority > 99 {
            bail!(
                "realtime_priority must be 0 (normal scheduling) or 1..=99, not {}",
                self.realtime_priority
            );
        }
        if self.rtp_port_min < 1024 {
            bail!("rtp_port_min must be >= 1024, not {}", self.rtp_port_min);
        }
        Ok(())
    }

    /// Media worker threads to start.
    pub fn workers(&self) -> usize {
        if self.media_workers > 0 {
            self.media_workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_on_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(c.media_ip.is_loopback());
        assert!(c.http_listen.ip().is_loopback());
        assert_eq!(c.http_listen.port(), 8080);
    }

    #[test]
    fn a_toml_file_overrides_defaults_and_unknown_keys_are_rejected() {
        let c = Config::from_toml("frame_ms = 10\nrtp_port_min = 30000\nrtp_port_max = 30100\n")
            .unwrap();
        assert_eq!(c.frame_ms, 10);
        assert_eq!(c.rtp_port_min, 30000);
        assert_eq!(c.data_dir, PathBuf::from("confer-data"));
        let err = Config::from_toml("frame_msec = 10").unwrap_err();
        assert!(format!("{err:#}").contains("frame_msec"), "{err:#}");
    }

    #[test]
    fn environment_overrides_the_file_and_bad_values_say_which_variable() {
        let mut c = Config::default();
        c.apply_env(|k| (k == "CONFER_FRAME_MS").then(|| "10".to_string()))
            .unwrap();
        assert_eq!(c.frame_ms, 10);
        let err = c
            .apply_env(|k| (k == "CONFER_RTP_PORT_MIN").then(|| "many".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("CONFER_RTP_PORT_MIN"), "{err}");
        c.apply_env(|k| (k == "CONFER_HTTP_LISTEN").then(|| "127.0.0.1:0".to_string()))
            .unwrap();
        assert_eq!(c.http_listen.port(), 0);
        let err = c
            .apply_env(|k| (k == "CONFER_HTTP_LISTEN").then(|| "localhost".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("CONFER_HTTP_LISTEN"), "{err}");
    }

    #[test]
    fn impossible_settings_are_refused_with_the_reason() {
        let c = Config {
            realtime_priority: 100,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("realtime_priority must be 0 (normal scheduling) or 1..=99")
        );
        let mut c = Config::default();
        c.apply_env(|k| (k == "CONFER_REALTIME_PRIORITY").then(|| "0".to_string()))
            .unwrap();
        assert_eq!(c.realtime_priority, 0);
        let c = Config {
            frame_ms: 15,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("frame_ms"));
        let c = Config {
            rtp_port_min: 5000,
            rtp_port_max: 4000,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("rtp_port_min")
        );
    }
}
