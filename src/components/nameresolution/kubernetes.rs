//! `kubernetes` name resolution: the app's headless `<app>-dapr` Service, looked up in cluster DNS (A and AAAA).

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::{AddressCache, Configuration, NameResolver, ResolveError, ResolveRequest, parse_ip, parse_socket_addr};

/// How long resolved addresses are reused, as daprd's `resolverCacheTTL`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(20);
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

const KNOWN_KEYS: &[&str] = &["clusterDomain", "template", "nameservers", "cacheTTL"];

/// Typed `kubernetes` configuration (Dapr's names, plus tandem's `nameservers` and `cacheTTL`).
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesConfig {
    pub cluster_domain: String,
    /// Replaces `<app>-dapr.<namespace>.svc.<clusterDomain>:<port>` when set.
    pub template: Option<Template>,
    /// DNS servers to ask; `None` uses the system's (`/etc/resolv.conf`).
    pub nameservers: Option<Vec<SocketAddr>>,
    pub cache_ttl: Duration,
}

impl KubernetesConfig {
    pub fn from_configuration(c: &Configuration) -> Result<Self, ResolveError> {
        c.warn_unknown("kubernetes", KNOWN_KEYS);
        let cluster_domain = c
            .string("clusterDomain")?
            .map(|d| d.trim_matches('.').to_owned())
            .unwrap_or_else(|| DEFAULT_CLUSTER_DOMAIN.into());
        if cluster_domain.is_empty() || cluster_domain.contains(char::is_whitespace) {
            return Err(ResolveError::config(
                "clusterDomain",
                format!("{cluster_domain:?} is not a DNS domain; write e.g. \"cluster.local\""),
            ));
        }
        let template = c.string("template")?.map(|t| Template::parse(&t)).transpose()?;
        let nameservers = c
            .string_list("nameservers")?
            .map(|list| list.iter().map(|s| parse_nameserver(s)).collect())
            .transpose()?;
        if nameservers.as_ref().is_some_and(Vec::is_empty) {
            return Err(ResolveError::config(
                "nameservers",
                "is empty; list at least one \"ip:port\" or leave it out to use /etc/resolv.conf",
            ));
        }
        Ok(KubernetesConfig {
            cluster_domain,
            template,
            nameservers,
            cache_ttl: c.duration("cacheTTL")?.unwrap_or(DEFAULT_CACHE_TTL),
        })
    }
}

fn parse_nameserver(s: &str) -> Result<SocketAddr, ResolveError> {
    parse_socket_addr(s)
        .or_else(|| parse_ip(s).map(|ip| SocketAddr::new(ip, 53)))
        .ok_or_else(|| {
            ResolveError::config(
                "nameservers",
                format!("{s:?} is not an \"ip:port\" or \"ip\" (e.g. \"10.96.0.10:53\")"),
            )
        })
}

/// One piece of a `template`.
#[derive(Clone, Debug, PartialEq)]
enum Part {
    Text(String),
    Id,
    Namespace,
    Port,
}

/// A `template` such as `{{.ID}}-dapr.{{.Namespace}}.svc.example.org:{{.Port}}`: literal text with
/// `{{.ID}}`, `{{.Namespace}}` and `{{.Port}}` substituted (not a full Go template).
#[derive(Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Template({:?})", self.source)
    }
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, ResolveError> {
        let mut parts = Vec::new();
        let mut rest = source;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| {
                ResolveError::config("template", format!("{source:?} has a \"{{{{\" without \"}}}}\""))
            })?;
            let field = after[..close].trim().trim_matches('-').trim();
            parts.push(match field {
                ".ID" => Part::Id,
                ".Namespace" => Part::Namespace,
                ".Port" => Part::Port,
                other => {
                    return Err(ResolveError::config(
                        "template",
                        format!(
                            "placeholder {{{{{other}}}}} is not supported; tandem substitutes {{{{.ID}}}}, {{{{.Namespace}}}} and {{{{.Port}}}}"
                        ),
                    ));
                }
            });
            rest = &after[close + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn render(&self, req: &ResolveRequest) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Id => out.push_str(&req.app_id),
                Part::Namespace => out.push_str(&req.namespace),
                Part::Port => out.push_str(&req.port.to_string()),
            }
        }
        out
    }
}

/// Where to look: a DNS name (or IP literal) and the port to pair with each address found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

/// Resolves app ids through cluster DNS, caching each answer for `cacheTTL`.
pub struct KubernetesResolver {
    cfg: KubernetesConfig,
    dns: TokioResolver,
    cache: AddressCache,
}

impl fmt::Debug for KubernetesResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubernetesResolver")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// `nameresolution.kubernetes`: DNS names of the `<app-id>-dapr` headless Services.
pub async fn build(
    md: crate::components::Metadata,
) -> Result<std::sync::Arc<dyn NameResolver>, crate::components::ComponentError> {
    let cfg = Configuration::from_value(&md.configuration)?;
    Ok(std::sync::Arc::new(KubernetesResolver::new(&cfg)?))
}

impl KubernetesResolver {
    pub fn new(c: &Configuration) -> Result<Self, ResolveError> {
        Self::with_config(KubernetesConfig::from_configuration(c)?)
    }

    pub fn with_config(cfg: KubernetesConfig) -> Result<Self, ResolveError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match &cfg.nameservers {
            Some(servers) => {
                let servers = servers
                    .iter()
                    .map(|addr| {
                        let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                        for conn in &mut ns.connections {
                            conn.port = addr.port();
                        }
                        ns
                    })
                    .collect();
                TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
            }
            None => TokioResolver::builder(provider).map_err(|e| {
                ResolveError::Backend(format!(
                    "name resolution kubernetes: cannot read the system DNS configuration (/etc/resolv.conf): {e}; \
                     fix that file or set \"nameservers\" in spec.nameResolution.configuration"
                ))
            })?,
        };
        let opts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Our own cache decides how long an answer lives, so a scaled Service is seen after `cacheTTL`.
        opts.positive_max_ttl = Some(Duration::ZERO);
        opts.negative_max_ttl = Some(Duration::ZERO);
        let dns = builder.build().map_err(|e| {
            ResolveError::Backend(format!(
                "name resolution kubernetes: cannot start the DNS resolver: {e}"
            ))
        })?;
        Ok(KubernetesResolver {
            cache: AddressCache::new(cfg.cache_ttl),
            cfg,
            dns,
        })
    }

    /// The DNS name and port for `req`: `<app>-dapr.<namespace>.svc.<clusterDomain>.` and the caller's port,
    /// or what the template renders (`host:port`, or `host` with the caller's port).
    pub fn target(&self, req: &ResolveRequest) -> Result<Target, ResolveError> {
        let Some(template) = &self.cfg.template else {
            return Ok(Target {
                host: format!("{}-dapr.{}.svc.{}.", req.app_id, req.namespace, self.cfg.cluster_domain),
                port: req.port,
            });
        };
        let rendered = template.render(req);
        if let Some(addr) = parse_socket_addr(&rendered) {
            return Ok(Target {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
        if parse_ip(&rendered).is_some() {
            return Ok(Target {
                host: rendered,
                port: req.port,
            });
        }
        match rendered.rsplit_once(':') {
            Some((host, port)) => port
                .parse::<u16>()
                .map(|port| Target {
                    host: host.to_owned(),
                    port,
                })
                .map_err(|_| {
                    ResolveError::config(
                        "template",
                        format!("rendered {rendered:?}, whose port {port:?} is not a number"),
                    )
                }),
            None => Ok(Target {
                host: rendered,
                port: req.port,
            }),
        }
    }

    async fn lookup(&self, req: &ResolveRequest, target: &Target) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(ip) = parse_ip(&target.host) {
            return Ok(vec![SocketAddr::new(ip, target.port)]);
        }
        let not_found = || {
            ResolveError::not_found(
                req,
                format!(
                    "DNS name {} has no A or AAAA records; check that the app runs with a Dapr sidecar \
                     in namespace {:?} and that the app id is spelled right",
                    target.host, req.namespace
                ),
            )
        };
        let lookup = match self.dns.lookup_ip(target.host.as_str()).await {
            Ok(lookup) => lookup,
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => return Err(not_found()),
            Err(e) => {
                return Err(ResolveError::Backend(format!(
                    "name resolution kubernetes: looking up {} failed: {e}; check that the cluster DNS \
                     (or the configured nameservers) is reachable",
                    target.host
                )));
            }
        };
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for ip in lookup.iter() {
            let addr = SocketAddr::new(ip, target.port);
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return Err(not_found());
        }
        Ok(addrs)
    }
}

#[async_trait]
impl NameResolver for KubernetesResolver {
    async fn resolve(&self, req: &ResolveRequest) -> Result<Vec<SocketAddr>, ResolveError> {
        if let Some(addrs) = self.cache.get(req) {
            return Ok(addrs);
        }
        let target = self.target(req)?;
        let addrs = self.lookup(req, &target).await?;
        tracing::debug!(app_id = %req.app_id, namespace = %req.namespace, host = %target.host, ?addrs, "resolved");
        self.cache.insert(req.clone(), addrs.clone());
        Ok(addrs)
    }

    fn invalidate(&self, req: &ResolveRequest) {
        self.cache.invalidate(req);
    }
}

#[cfg(test)]
mod tests;
