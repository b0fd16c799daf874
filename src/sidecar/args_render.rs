//! Renders a sidecar [`Args`] back into the command-line flags that parse to it. The injector builds the
//! injected container's configuration as an `Args` and passes it as flags through here, so the flags it
//! writes are always ones `tandem sidecar` accepts, with the meaning the sidecar gives them.

use clap::builder::IntoResettable;
use clap::{Args as _, FromArgMatches as _, ValueEnum as _};

use super::args::Args;

impl Args {
    /// The values clap declares when no flag is given, ignoring environment variables (unlike
    /// [`Args::default`], which reads `NAMESPACE`, `POD_NAME`, ...). [`Args::to_flags`] renders what differs from these.
    pub fn declared_defaults() -> Args {
        let cmd = Args::augment_args(clap::Command::new("sidecar")).mut_args(|a| a.env(None::<&str>.into_resettable()));
        let matches = cmd
            .try_get_matches_from(["sidecar"])
            .expect("the sidecar flags parse without arguments");
        Args::from_arg_matches(&matches).expect("declared defaults form an Args")
    }

    /// Every flag whose value differs from its declared default, by its long name, in declaration order.
    /// Parsing the result with clap (and no environment) gives back an `Args` equal to `self`.
    ///
    /// Values are separate arguments (`--app-id`, `myapp`) unless they start with `-`, which are joined
    /// (`--app-max-concurrency=-1`); booleans are always joined (`--log-as-json=true`) because they take an
    /// optional value. The API tokens are rendered too when set, but the injector never sets them: it passes
    /// them as environment variables from Secrets.
    pub fn to_flags(&self) -> Vec<String> {
        let d = Args::declared_defaults();
        let mut r = Renderer::new();
        // Destructured without `..`: a new field fails to compile here until it is rendered.
        let Args {
            app_id,
            app_port,
            app_protocol,
            app_channel_address,
            dapr_http_port,
            dapr_grpc_port,
            dapr_internal_grpc_port,
            dapr_internal_grpc_listen_address,
            dapr_public_port,
            metrics_port,
            enable_metrics,
            dapr_listen_addresses,
            resources_path,
            config,
            mode,
            log_level,
            log_as_json,
            enable_api_logging,
            app_max_concurrency,
            max_body_size,
            dapr_graceful_shutdown_seconds,
            enable_app_health_check,
            app_health_check_path,
            app_health_probe_interval,
            app_health_probe_timeout,
            app_health_threshold,
            app_ready_hold,
            placement_host_address,
            control_plane_address,
            enable_mtls,
            sentry_address,
            namespace,
            pod_name,
            api_token,
            app_token,
        } = self;
        r.value("app_id", app_id, &d.app_id);
        r.option("app_port", app_port, &d.app_port);
        r.value("app_protocol", app_protocol, &d.app_protocol);
        r.value("app_channel_address", app_channel_address, &d.app_channel_address);
        r.option("dapr_http_port", dapr_http_port, &d.dapr_http_port);
        r.option("dapr_grpc_port", dapr_grpc_port, &d.dapr_grpc_port);
        r.option(
            "dapr_internal_grpc_port",
            dapr_internal_grpc_port,
            &d.dapr_internal_grpc_port,
        );
        r.value(
            "dapr_internal_grpc_listen_address",
            dapr_internal_grpc_listen_address,
            &d.dapr_internal_grpc_listen_address,
        );
        r.option("dapr_public_port", dapr_public_port, &d.dapr_public_port);
        r.option("metrics_port", metrics_port, &d.metrics_port);
        r.boolean("enable_metrics", *enable_metrics, d.enable_metrics);
        if *dapr_listen_addresses != d.dapr_listen_addresses {
            r.push("dapr_listen_addresses", &dapr_listen_addresses.join(","));
        }
        if *resources_path != d.resources_path {
            for p in resources_path {
                r.push("resources_path", p);
            }
        }
        r.value("config", config, &d.config);
        if *mode != d.mode {
            let name = mode.to_possible_value().expect("every Mode has a name");
            r.push("mode", name.get_name());
        }
        r.value("log_level", log_level, &d.log_level);
        r.boolean("log_as_json", *log_as_json, d.log_as_json);
        if *enable_api_logging != d.enable_api_logging
            && let Some(b) = enable_api_logging
        {
            r.joined("enable_api_logging", &b.to_string());
        }
        r.value("app_max_concurrency", app_max_concurrency, &d.app_max_concurrency);
        r.value("max_body_size", max_body_size, &d.max_body_size);
        r.value(
            "dapr_graceful_shutdown_seconds",
            dapr_graceful_shutdown_seconds,
            &d.dapr_graceful_shutdown_seconds,
        );
        r.boolean(
            "enable_app_health_check",
            *enable_app_health_check,
            d.enable_app_health_check,
        );
        r.value("app_health_check_path", app_health_check_path, &d.app_health_check_path);
        r.value(
            "app_health_probe_interval",
            app_health_probe_interval,
            &d.app_health_probe_interval,
        );
        r.value(
            "app_health_probe_timeout",
            app_health_probe_timeout,
            &d.app_health_probe_timeout,
        );
        r.value("app_health_threshold", app_health_threshold, &d.app_health_threshold);
        if app_ready_hold != &d.app_ready_hold {
            r.push(
                "app_ready_hold",
                &humantime::format_duration(*app_ready_hold).to_string(),
            );
        }
        r.option(
            "placement_host_address",
            placement_host_address,
            &d.placement_host_address,
        );
        r.value("control_plane_address", control_plane_address, &d.control_plane_address);
        r.boolean("enable_mtls", *enable_mtls, d.enable_mtls);
        r.value("sentry_address", sentry_address, &d.sentry_address);
        r.value("namespace", namespace, &d.namespace);
        r.value("pod_name", pod_name, &d.pod_name);
        r.option("api_token", api_token, &d.api_token);
        r.option("app_token", app_token, &d.app_token);
        r.out
    }
}

/// Looks long names up by field id in clap's own definition, so a renamed flag cannot be rendered by its old name.
struct Renderer {
    cmd: clap::Command,
    out: Vec<String>,
}

impl Renderer {
    fn new() -> Self {
        Self {
            cmd: Args::augment_args(clap::Command::new("sidecar")),
            out: Vec::new(),
        }
    }

    fn long(&self, id: &str) -> String {
        let arg = self
            .cmd
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("sidecar Args has no field {id}"));
        let long = arg
            .get_long()
            .unwrap_or_else(|| panic!("sidecar flag {id} has no long name"));
        format!("--{long}")
    }

    fn push(&mut self, id: &str, value: &str) {
        if value.starts_with('-') {
            self.joined(id, value);
        } else {
            let long = self.long(id);
            self.out.push(long);
            self.out.push(value.to_owned());
        }
    }

    fn joined(&mut self, id: &str, value: &str) {
        let long = self.long(id);
        self.out.push(format!("{long}={value}"));
    }

    fn value<T: PartialEq + ToString>(&mut self, id: &str, value: &T, default: &T) {
        if value != default {
            self.push(id, &value.to_string());
        }
    }

    fn option<T: PartialEq + ToString>(&mut self, id: &str, value: &Option<T>, default: &Option<T>) {
        if value != default
            && let Some(v) = value
        {
            self.push(id, &v.to_string());
        }
    }

    fn boolean(&mut self, id: &str, value: bool, default: bool) {
        if value != default {
            self.joined(id, &value.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::sidecar::args::Mode;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: Args,
    }

    /// Parses flags the way the injected container's `tandem sidecar ...` would, but without environment.
    fn parse_back(flags: &[String]) -> Args {
        let cmd = <Wrapper as clap::CommandFactory>::command().mut_args(|a| a.env(None::<&str>.into_resettable()));
        let matches = cmd
            .try_get_matches_from(std::iter::once("sidecar".to_owned()).chain(flags.iter().cloned()))
            .unwrap_or_else(|e| panic!("rendered flags {flags:?} do not parse: {e}"));
        Args::from_arg_matches(&matches).unwrap()
    }

    fn assert_round_trips(a: &Args) {
        let flags = a.to_flags();
        let back = parse_back(&flags);
        assert_eq!(format!("{back:?}"), format!("{a:?}"), "flags: {flags:?}");
    }

    /// Every field set away from its default.
    fn everything_set() -> Args {
        Args {
            app_id: "orders".into(),
            app_port: Some(8080),
            app_protocol: "grpc".into(),
            app_channel_address: "10.0.0.7".into(),
            dapr_http_port: Some(3500),
            dapr_grpc_port: Some(50001),
            dapr_internal_grpc_port: Some(50002),
            dapr_internal_grpc_listen_address: "10.0.0.7".into(),
            dapr_public_port: Some(3501),
            metrics_port: Some(9090),
            enable_metrics: false,
            dapr_listen_addresses: vec!["[::1]".into(), "127.0.0.1".into()],
            resources_path: vec!["/a".into(), "/b,c".into()],
            config: "appconfig".into(),
            mode: Mode::Kubernetes,
            log_level: "debug".into(),
            log_as_json: true,
            enable_api_logging: Some(false),
            app_max_concurrency: 10,
            max_body_size: "16Mi".into(),
            dapr_graceful_shutdown_seconds: 30,
            enable_app_health_check: true,
            app_health_check_path: "/ready".into(),
            app_health_probe_interval: 7,
            app_health_probe_timeout: 900,
            app_health_threshold: 4,
            app_ready_hold: std::time::Duration::from_secs(5),
            placement_host_address: Some("placement:50005".into()),
            control_plane_address: "tandem-api.tandem-system.svc:443".into(),
            enable_mtls: true,
            sentry_address: "dapr-sentry.dapr-system.svc:443".into(),
            namespace: "shop".into(),
            pod_name: "orders-1".into(),
            api_token: Some("t0k".into()),
            app_token: Some("-starts-with-dash".into()),
        }
    }

    #[test]
    fn defaults_render_to_nothing() {
        assert!(Args::declared_defaults().to_flags().is_empty());
    }

    #[test]
    fn every_field_round_trips() {
        let a = everything_set();
        assert_round_trips(&a);
        // Every field differs from its default, so every field must appear as a flag.
        let flags = a.to_flags();
        let rendered: Vec<&str> = flags
            .iter()
            .filter(|f| f.starts_with("--"))
            .map(|f| f.split('=').next().unwrap())
            .collect();
        let cmd = Args::augment_args(clap::Command::new("sidecar"));
        for arg in cmd.get_arguments() {
            let long = format!("--{}", arg.get_long().unwrap());
            assert!(rendered.contains(&long.as_str()), "{long} not rendered: {flags:?}");
        }
    }

    #[test]
    fn negative_values_and_booleans_are_joined() {
        let a = Args {
            app_max_concurrency: -7,
            dapr_graceful_shutdown_seconds: -1,
            log_as_json: true,
            enable_api_logging: Some(true),
            ..Args::declared_defaults()
        };
        let flags = a.to_flags();
        assert_eq!(
            flags,
            [
                "--log-as-json=true",
                "--enable-api-logging=true",
                "--app-max-concurrency=-7",
                "--dapr-graceful-shutdown-seconds=-1",
            ]
        );
        assert_round_trips(&a);
    }

    #[test]
    fn kubernetes_flags_render_like_daprs() {
        let a = Args {
            mode: Mode::Kubernetes,
            dapr_http_port: Some(3500),
            dapr_listen_addresses: vec!["[::1]".into(), "127.0.0.1".into()],
            app_id: "myapp".into(),
            ..Args::declared_defaults()
        };
        let flags = a.to_flags().join(" ");
        assert_eq!(
            flags,
            "--app-id myapp --dapr-http-port 3500 --dapr-listen-addresses [::1],127.0.0.1 --mode kubernetes"
        );
    }

    #[test]
    fn random_configurations_round_trip() {
        const WORDS: [&str; 8] = ["a", "x-y", "-dash", "with space", "/p/q", "9", "", "é"];
        let mut rng = rand::rngs::StdRng::seed_from_u64(4);
        let word = |rng: &mut rand::rngs::StdRng| WORDS[rng.random_range(0..WORDS.len())].to_owned();
        for _ in 0..300 {
            let mut a = Args::declared_defaults();
            if rng.random_bool(0.5) {
                a.app_id = word(&mut rng);
            }
            if rng.random_bool(0.5) {
                a.app_port = Some(rng.random());
            }
            if rng.random_bool(0.3) {
                a.config = word(&mut rng);
            }
            if rng.random_bool(0.3) {
                a.placement_host_address = Some(word(&mut rng));
            }
            if rng.random_bool(0.3) {
                a.control_plane_address = word(&mut rng);
            }
            if rng.random_bool(0.3) {
                a.enable_api_logging = Some(rng.random_bool(0.5));
            }
            if rng.random_bool(0.3) {
                a.enable_metrics = rng.random_bool(0.5);
            }
            if rng.random_bool(0.3) {
                a.app_max_concurrency = rng.random::<i32>() as i64;
            }
            if rng.random_bool(0.3) {
                a.dapr_graceful_shutdown_seconds = rng.random::<i16>() as i64;
            }
            if rng.random_bool(0.3) {
                a.resources_path = vec![word(&mut rng), word(&mut rng)];
            }
            if rng.random_bool(0.3) {
                a.api_token = Some(word(&mut rng));
            }
            if rng.random_bool(0.3) {
                a.mode = Mode::Kubernetes;
            }
            assert_round_trips(&a);
        }
    }
}
