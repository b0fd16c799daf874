use super::*;

struct Tree(tempfile::TempDir);

impl Tree {
    fn new(dirs: &[&str], files: &[&str]) -> Tree {
        let t = tempfile::tempdir().unwrap();
        for d in dirs {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        for f in files {
            std::fs::write(t.path().join(f), "kind: Configuration\n").unwrap();
        }
        Tree(t)
    }
    fn path(&self, p: &str) -> PathBuf {
        self.0.path().join(p)
    }
    fn parse(&self, yaml: &str) -> Result<RunFile, RunFileError> {
        parse(yaml, "dapr.yaml", self.0.path())
    }
}

#[test]
fn a_quickstart_run_file_resolves_as_the_dapr_cli_does() {
    let t = Tree::new(&["components", "order-processor", "checkout"], &[]);
    let f = t
        .parse(
            r#"
version: 1
common:
  resourcesPath: ./components/
  env:
    DEBUG: true
    LEVEL: common
apps:
  - appID: order-processor-sdk
    appDirPath: ./order-processor/
    appPort: 6002
    daprHTTPPort: 3601
    command: ["python3", "app.py"]
    env:
      LEVEL: app
  - appDirPath: ./checkout/
    command: ["python3", "app.py"]
    appLogDestination: console
"#,
        )
        .unwrap();
    assert_eq!(f.apps.len(), 2);
    let (a, b) = (&f.apps[0], &f.apps[1]);
    assert_eq!(a.app_id, "order-processor-sdk");
    assert_eq!(b.app_id, "checkout", "appID defaults to the app directory's name");
    assert_eq!(a.sidecar.app_port, Some(6002));
    assert_eq!(a.sidecar.dapr_http_port, Some(3601));
    assert_eq!(b.sidecar.dapr_http_port, None, "unset ports are chosen at start");
    assert_eq!(a.command, ["python3", "app.py"]);
    assert_eq!(a.app_dir, t.path("order-processor"));
    let components = t.path("components").display().to_string();
    assert_eq!(a.sidecar.resources_path, std::slice::from_ref(&components));
    assert_eq!(b.sidecar.resources_path, [components]);
    assert_eq!(a.env["DEBUG"], "true");
    assert_eq!(a.env["LEVEL"], "app", "an app's env wins over common's");
    assert_eq!(b.env["LEVEL"], "common");
    assert_eq!(
        (a.app_log, a.daprd_log),
        (LogDestination::FileAndConsole, LogDestination::File)
    );
    assert_eq!(b.app_log, LogDestination::Console);
    assert_eq!(a.sidecar.dapr_internal_grpc_listen_address, "127.0.0.1");
    assert!(f.ignored.is_empty(), "{:?}", f.ignored);
}

#[test]
fn resources_and_config_take_the_app_then_its_dot_dapr_then_common() {
    let t = Tree::new(
        &["common-res", "own", "own/res", "dotted/.dapr/resources", "plain"],
        &["common.yaml", "own/config.yaml", "dotted/.dapr/config.yaml"],
    );
    let f = t
        .parse(
            r#"
version: 1
common:
  resourcesPaths: [./common-res]
  configFilePath: common.yaml
apps:
  - appDirPath: own
    resourcesPath: res
    configFilePath: config.yaml
  - appDirPath: dotted
  - appDirPath: plain
"#,
        )
        .unwrap();
    let s = |p: &str| t.path(p).display().to_string();
    let [own, dotted, plain] = &f.apps[..] else {
        panic!("three apps")
    };
    assert_eq!(
        own.sidecar.resources_path,
        [s("own/res")],
        "the app's own path, relative to its directory"
    );
    assert_eq!(own.sidecar.config, s("own/config.yaml"));
    assert_eq!(dotted.sidecar.resources_path, [s("dotted/.dapr/resources")]);
    assert_eq!(dotted.sidecar.config, s("dotted/.dapr/config.yaml"));
    assert_eq!(plain.sidecar.resources_path, [s("common-res")]);
    assert_eq!(plain.sidecar.config, s("common.yaml"));
    assert!(own.command.is_empty(), "no command: the sidecar runs alone");
}

#[test]
fn no_resources_anywhere_means_the_embedded_defaults() {
    let t = Tree::new(&["a"], &[]);
    let f = t.parse("version: 1\napps:\n  - appDirPath: a\n").unwrap();
    assert!(f.apps[0].sidecar.resources_path.is_empty());
    assert_eq!(f.apps[0].sidecar.config, "");
}

#[test]
fn shared_settings_reach_the_sidecar_and_the_app_overrides_them() {
    let t = Tree::new(&["a", "b"], &[]);
    let f = t
        .parse(
            r#"
version: 1
common:
  logLevel: debug
  appProtocol: grpc
  enableAppHealthCheck: true
  appHealthProbeInterval: 2
  appHealthCheckPath: /ready
  appMaxConcurrency: 4
  maxBodySize: 8Mi
  enableApiLogging: true
apps:
  - appDirPath: a
    appProtocol: http
    logLevel: warn
  - appDirPath: b
"#,
        )
        .unwrap();
    let (a, b) = (&f.apps[0].sidecar, &f.apps[1].sidecar);
    assert_eq!((a.app_protocol.as_str(), a.log_level.as_str()), ("http", "warn"));
    assert_eq!((b.app_protocol.as_str(), b.log_level.as_str()), ("grpc", "debug"));
    assert!(a.enable_app_health_check && b.enable_app_health_check);
    assert_eq!(
        (b.app_health_probe_interval, b.app_health_check_path.as_str()),
        (2, "/ready")
    );
    assert_eq!((b.app_max_concurrency, b.max_body_size.as_str()), (4, "8Mi"));
    assert_eq!(b.enable_api_logging, Some(true));
}

#[test]
fn a_wrong_type_names_the_key_and_the_line() {
    let t = Tree::new(&["a"], &[]);
    let err = t
        .parse("version: 1\napps:\n  - appDirPath: a\n    appPort: eighty\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("apps[0].appPort"), "{err}");
    assert!(err.contains("line 4"), "{err}");
    let err = t
        .parse("version: 1\napps:\n  - appDirPath: a\n    daprHTTPPort: 70000\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("apps[0].daprHTTPPort") && err.contains("70000 is not a port"),
        "{err}"
    );
    assert!(err.contains("line 4"), "{err}");
    let err = t
        .parse("version: 1\napps:\n  - appDirPath: a\n    appLogDestination: stdout\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("apps[0].appLogDestination") && err.contains("fileAndConsole"),
        "{err}"
    );
    let err = t
        .parse("version: 1\napps:\n  - appDirPath: a\n    command: python3 app.py\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("apps[0].command") && err.contains("line 4"), "{err}");
    let err = t
        .parse("version: 1\ncommon:\n  env:\n    A: [1, 2]\napps:\n  - appDirPath: a\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("common.env.A") && err.contains("line 4"), "{err}");
}

#[test]
fn missing_and_wrong_values_are_named() {
    let t = Tree::new(&["a"], &[]);
    let cases = [
        ("apps:\n  - appDirPath: a\n", "required field 'version'"),
        ("version: 2\napps:\n  - appDirPath: a\n", "version 2 is not supported"),
        ("version: 1\n", "no apps to run"),
        ("version: 1\napps:\n  - appID: x\n", "missing field `appDirPath`"),
        ("version: 1\napps:\n  - appDirPath: nowhere\n", "apps[0].appDirPath"),
        (
            "version: 1\napps:\n  - appDirPath: a\n    resourcesPath: nope\n",
            "apps[0] (a).resourcesPath",
        ),
        (
            "version: 1\ncommon:\n  configFilePath: nope.yaml\napps:\n  - appDirPath: a\n",
            "common.configFilePath",
        ),
        (
            "version: 1\napps:\n  - appDirPath: a\n  - appDirPath: ./a\n",
            "appears more than once",
        ),
        (
            "version: 1\napps:\n  - appDirPath: a\n    logLevel: loud\n",
            "--log-level \"loud\"",
        ),
        (
            "version: 1\napps:\n  - appDirPath: a\n    command: ['']\n",
            "the program is empty",
        ),
        ("version: 1\napps:\n  - appDirPath: a\n   bad: indent\n", "line 4"),
    ];
    for (yaml, want) in cases {
        let err = t.parse(yaml).unwrap_err().to_string();
        assert!(err.contains(want), "{yaml:?}: {err}");
    }
    let err = t
        .parse("version: 1\napps:\n  - appID: x\n    appPort: 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3"), "the missing field points at its entry: {err}");
}

#[test]
fn keys_tandem_does_not_act_on_are_listed_once() {
    let t = Tree::new(&["a"], &[]);
    let f = t
        .parse(
            r#"
version: 1
extra: 1
common:
  appPort: 3000
  runtimePath: /opt/dapr
apps:
  - appDirPath: a
    containerImage: ghcr.io/x
    unixDomainSocket: /tmp
    colour: blue
"#,
        )
        .unwrap();
    assert_eq!(
        f.ignored,
        [
            "extra is ignored: not a run-file key",
            "common.appPort is ignored: it belongs in an app entry, not in common",
            "common.runtimePath is ignored: tandem is its own runtime",
            "apps[0].containerImage is ignored: apps run as local processes only",
            "apps[0].unixDomainSocket is ignored: Unix domain sockets are not supported yet",
            "apps[0].colour is ignored: not a run-file key",
        ]
    );
}

#[test]
fn locate_takes_a_directory_a_yaml_file_or_stdin() {
    let t = Tree::new(&["d"], &[]);
    std::fs::write(t.path("d/dapr.yaml"), "version: 1\n").unwrap();
    std::fs::write(t.path("run.yml"), "version: 1\n").unwrap();
    std::fs::write(t.path("run.txt"), "version: 1\n").unwrap();
    assert_eq!(locate(t.path("d").to_str().unwrap()).unwrap(), t.path("d/dapr.yaml"));
    assert_eq!(locate(t.path("run.yml").to_str().unwrap()).unwrap(), t.path("run.yml"));
    assert!(
        locate(t.path("run.txt").to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("not a YAML file")
    );
    assert!(
        locate(t.0.path().to_str().unwrap())
            .unwrap_err()
            .to_string()
            .contains("no dapr.yaml")
    );
    assert!(locate("/no/such/dir").is_err());
    assert_eq!(locate("-").unwrap(), Path::new("-"));
}
