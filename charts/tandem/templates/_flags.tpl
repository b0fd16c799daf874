{{- /*
Every flag the chart passes to tandem, in one place. The operator and injector parse these with clap; a flag
renamed there must be renamed here (charts test: tests/chart.rs).
  operator: the sidecar-facing API on 6500 (Service tandem-api 443 -> 6500), /healthz, /readyz and /metrics on
            8080, leader election through a Lease; its namespace comes from the POD_NAMESPACE env variable.
            With mtls.enabled it is the certificate authority: trust bundle in the dapr-trust-bundle Secret and
            ConfigMap of its namespace, workload certificates signed on POST /v1/certificate.
  injector: HTTPS /mutate on 4000 (Service tandem-sidecar-injector 443 -> 4000), health on 8080; patches the
            caBundle of the webhook configuration it is named; injected sidecars get
            --control-plane-address tandem-api.<POD_NAMESPACE>.svc:443 from the injector itself.
*/ -}}
{{- define "tandem.operatorArgs" -}}
- operator
- --api-port=6500
- --health-port=8080
- --leader-elect
- --enable-mtls={{ .Values.mtls.enabled }}
- --log-level={{ .Values.logLevel }}
{{- end }}

{{- define "tandem.injectorArgs" -}}
- injector
- --port=4000
- --health-port=8080
- --webhook-name=tandem-sidecar-injector
- --service-name=tandem-sidecar-injector
- "--sidecar-image={{ include "tandem.sidecarImage" . }}"
- --enable-mtls={{ .Values.mtls.enabled }}
- --log-level={{ .Values.logLevel }}
{{- end }}
