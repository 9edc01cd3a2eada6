{{/*
Helpers. Templates named "bouncer.inject.*" are the public interface for
teams that run bouncer inside their own workload (README: "Inject into your
own workload"). Every template here takes this chart's context: "." inside
the chart, ".Subcharts.bouncer" in a parent chart that depends on it.
*/}}

{{- define "bouncer.name" -}}
{{- default "bouncer" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "bouncer.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "bouncer.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "bouncer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bouncer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bouncer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "bouncer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: forced-errors
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "bouncer.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Paths inside the bouncer container. */}}
{{- define "bouncer.configDir" -}}/etc/bouncer/config{{- end -}}
{{- define "bouncer.configFile" -}}{{ include "bouncer.configDir" . }}/bouncer.toml{{- end -}}
{{- define "bouncer.tokensDir" -}}/etc/bouncer/api-tokens{{- end -}}
{{- define "bouncer.gitRoot" -}}/rules{{- end -}}
{{- define "bouncer.gitLink" -}}repo{{- end -}}

{{/* rules_dir: the link git-sync swaps (plus the rules' directory inside the repository), or the ConfigMap's mount. */}}
{{- define "bouncer.rulesDir" -}}
{{- if eq .Values.rules.source "gitSync" -}}
{{- $sub := trimAll "/" .Values.rules.gitSync.subPath -}}
{{- if $sub -}}
{{- printf "%s/%s/%s" (include "bouncer.gitRoot" .) (include "bouncer.gitLink" .) $sub -}}
{{- else -}}
{{- printf "%s/%s" (include "bouncer.gitRoot" .) (include "bouncer.gitLink" .) -}}
{{- end -}}
{{- else -}}
/etc/bouncer/rules
{{- end -}}
{{- end -}}

{{- define "bouncer.rulesConfigMapName" -}}
{{- if eq .Values.rules.source "existingConfigMap" -}}
{{- .Values.rules.existingConfigMap.name -}}
{{- else -}}
{{- include "bouncer.fullname" . }}-rules
{{- end -}}
{{- end -}}

{{/* The sum of what must fit in the termination grace period. */}}
{{- define "bouncer.drainBudget" -}}
{{- add (int .Values.sender.drainSeconds) (int .Values.config.shutdownTimeoutSeconds) -}}
{{- end -}}

{{- define "bouncer.inject.terminationGracePeriodSeconds" -}}
{{- include "bouncer.validate" . -}}
{{- $budget := include "bouncer.drainBudget" . | int -}}
{{- if kindIs "invalid" .Values.workload.terminationGracePeriodSeconds -}}
{{- add $budget 10 -}}
{{- else -}}
{{- .Values.workload.terminationGracePeriodSeconds | int -}}
{{- end -}}
{{- end -}}

{{/* A TOML value: strings quoted, integers and booleans as they are. */}}
{{- define "bouncer.tomlValue" -}}
{{- if kindIs "string" . -}}
{{- . | quote -}}
{{- else if kindIs "bool" . -}}
{{- . -}}
{{- else if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- . | int64 -}}
{{- else -}}
{{- . -}}
{{- end -}}
{{- end -}}

{{/* librdkafka takes every property as text. */}}
{{- define "bouncer.kafkaValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- . | int64 | toString | quote -}}
{{- else -}}
{{- . | toString | quote -}}
{{- end -}}
{{- end -}}

{{/* The content of bouncer.toml. */}}
{{- define "bouncer.toml" -}}
# bouncer configuration rendered by the bouncer Helm chart; every setting is
# described in docs/operations.md. BOUNCER_… environment variables override it.
group = {{ .Values.config.group | quote }}
rules_dir = {{ include "bouncer.rulesDir" . | quote }}
http_listen = {{ printf "%s:%d" .Values.http.listenAddress (int .Values.http.port) | quote }}
api_tokens_file = {{ ternary (printf "%s/tokens" (include "bouncer.tokensDir" .)) "" (ne .Values.apiTokens.existingSecret "") | quote }}
guarantee = {{ .Values.config.guarantee | quote }}
shutdown_timeout = {{ printf "%ds" (int .Values.config.shutdownTimeoutSeconds) | quote }}
{{- range $key, $value := .Values.config.settings }}
{{ $key }} = {{ include "bouncer.tomlValue" $value }}
{{- end }}

[topics]
input = {{ .Values.config.topics.input | quote }}
forward = {{ .Values.config.topics.forward | quote }}
results = {{ .Values.config.topics.results | quote }}
retry = {{ .Values.config.topics.retry | quote }}
dead_letter = {{ .Values.config.topics.deadLetter | quote }}
control = {{ .Values.config.topics.control | quote }}

[kafka]
"bootstrap.servers" = {{ .Values.config.kafka.bootstrapServers | quote }}
{{- range $key, $value := .Values.config.kafka.properties }}
{{ $key | quote }} = {{ include "bouncer.kafkaValue" $value }}
{{- end }}

[kafka.consumer]
{{- range $key, $value := .Values.config.kafka.consumer }}
{{ $key | quote }} = {{ include "bouncer.kafkaValue" $value }}
{{- end }}

[kafka.producer]
{{- range $key, $value := .Values.config.kafka.producer }}
{{ $key | quote }} = {{ include "bouncer.kafkaValue" $value }}
{{- end }}
{{ end -}}

{{/*
Render-time checks: each fails with what to change. Called by every
template that renders the pod, so a parent chart gets them too.
*/}}
{{- define "bouncer.validate" -}}
{{- if eq .Values.sidecar.mode "native" -}}
{{- if not (semverCompare ">=1.29.0-0" .Capabilities.KubeVersion.Version) -}}
{{- fail (printf "sidecar.mode \"native\" runs bouncer as a Kubernetes native sidecar (an init container with restartPolicy: Always), which needs Kubernetes 1.29 or later, and this cluster is %s. Upgrade the cluster, or set sidecar.mode=classic to run bouncer as a second ordinary container. (helm template and helm lint do not ask the cluster: give them --kube-version; a helm built with go install otherwise assumes 1.20.)" .Capabilities.KubeVersion.Version) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.config.guarantee "exactly-once") (ne .Values.workload.kind "StatefulSet") -}}
{{- fail "config.guarantee \"exactly-once\" needs a transactional.id that survives restarts, hence stable pod names: set workload.kind=StatefulSet" -}}
{{- end -}}
{{- if and (eq .Values.rules.source "gitSync") (not .Values.rules.gitSync.repo) -}}
{{- fail "rules.source \"gitSync\" needs rules.gitSync.repo (the rules repository's URL)" -}}
{{- end -}}
{{- if and (eq .Values.rules.source "existingConfigMap") (not .Values.rules.existingConfigMap.name) -}}
{{- fail "rules.source \"existingConfigMap\" needs rules.existingConfigMap.name" -}}
{{- end -}}
{{- if and .Values.rules.gitSync.auth.ssh.secretName .Values.rules.gitSync.auth.https.secretName -}}
{{- fail "rules.gitSync.auth: set either ssh.secretName or https.secretName, not both" -}}
{{- end -}}
{{- $budget := include "bouncer.drainBudget" . | int -}}
{{- if not (kindIs "invalid" .Values.workload.terminationGracePeriodSeconds) -}}
{{- if le (int .Values.workload.terminationGracePeriodSeconds) $budget -}}
{{- fail (printf "workload.terminationGracePeriodSeconds (%d) must exceed sender.drainSeconds (%d) + config.shutdownTimeoutSeconds (%d) = %d, or Kubernetes kills bouncer before it has committed what it processed; raise it, or leave it null to have it computed" (int .Values.workload.terminationGracePeriodSeconds) (int .Values.sender.drainSeconds) (int .Values.config.shutdownTimeoutSeconds) $budget) -}}
{{- end -}}
{{- end -}}
{{- $port := int .Values.http.port -}}
{{- range .Values.sender.ports -}}
{{- if eq (int .containerPort) $port -}}
{{- fail (printf "sender.ports uses %d, which is bouncer's http.port; the containers share the pod's network: choose another http.port" $port) -}}
{{- end -}}
{{- end -}}
{{- $managed := list "BOUNCER_RULES_DIR" "BOUNCER_HTTP_LISTEN" "BOUNCER_API_TOKENS_FILE" "BOUNCER_SHUTDOWN_TIMEOUT" "BOUNCER_GROUP" "BOUNCER_GUARANTEE" "BOUNCER_TRANSACTIONAL_ID" -}}
{{- range .Values.extraEnv -}}
{{- if has .name $managed -}}
{{- fail (printf "extraEnv sets %s, which the chart manages (probes, volumes and the grace period depend on it); use the chart value instead (http.port, rules.*, apiTokens.*, config.*)" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The bouncer container. */}}
{{- define "bouncer.container" -}}
- name: bouncer
  image: {{ include "bouncer.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if eq .Values.sidecar.mode "native" }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", {{ include "bouncer.configFile" . | quote }}]
  env:
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- if eq .Values.config.guarantee "exactly-once" }}
    - name: BOUNCER_TRANSACTIONAL_ID
      value: {{ printf "%s$(POD_NAME)" (default "$(POD_NAMESPACE)." .Values.config.transactionalIdPrefix) | quote }}
    {{- end }}
    {{- if .Values.logLevel }}
    - name: RUST_LOG
      value: {{ .Values.logLevel | quote }}
    {{- end }}
    {{- with .Values.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.extraEnvFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: bouncer-http
      containerPort: {{ .Values.http.port }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: bouncer-http
    periodSeconds: {{ .Values.probes.startup.periodSeconds }}
    failureThreshold: {{ .Values.probes.startup.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: bouncer-http
    periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
    failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: bouncer-http
    periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
    failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
    timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: bouncer-config
      mountPath: {{ include "bouncer.configDir" . }}
      readOnly: true
    {{- if eq .Values.rules.source "gitSync" }}
    - name: bouncer-rules-git
      mountPath: {{ include "bouncer.gitRoot" . }}
      readOnly: true
    {{- else }}
    - name: bouncer-rules
      mountPath: {{ include "bouncer.rulesDir" . }}
      readOnly: true
    {{- end }}
    {{- if .Values.apiTokens.existingSecret }}
    - name: bouncer-api-tokens
      mountPath: {{ include "bouncer.tokensDir" . }}
      readOnly: true
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/* A git-sync container; "oneTime" makes it the initial clone. */}}
{{- define "bouncer.gitSyncContainer" -}}
{{- $ctx := .ctx -}}
{{- $g := $ctx.Values.rules.gitSync -}}
- name: {{ ternary "git-sync-init" "git-sync" .oneTime }}
  image: {{ printf "%s:%s" $g.image.repository $g.image.tag | quote }}
  imagePullPolicy: {{ $g.image.pullPolicy }}
  {{- if and (not .oneTime) (eq $ctx.Values.sidecar.mode "native") }}
  restartPolicy: Always
  {{- end }}
  args:
    - --repo={{ $g.repo }}
    - --ref={{ $g.ref }}
    - --root={{ include "bouncer.gitRoot" $ctx }}
    - --link={{ include "bouncer.gitLink" $ctx }}
    - --depth={{ $g.depth }}
    {{- if .oneTime }}
    - --one-time
    {{- else }}
    - --period={{ $g.period }}
    {{- end }}
    {{- if $g.auth.ssh.secretName }}
    - --ssh-key-file=/etc/git-secret/{{ $g.auth.ssh.keyKey }}
    - --ssh-known-hosts=true
    - --ssh-known-hosts-file=/etc/git-secret/{{ $g.auth.ssh.knownHostsKey }}
    {{- end }}
    {{- range $g.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  {{- if $g.auth.https.secretName }}
  env:
    - name: GITSYNC_USERNAME
      valueFrom:
        secretKeyRef:
          name: {{ $g.auth.https.secretName }}
          key: {{ $g.auth.https.usernameKey }}
    - name: GITSYNC_PASSWORD
      valueFrom:
        secretKeyRef:
          name: {{ $g.auth.https.secretName }}
          key: {{ $g.auth.https.passwordKey }}
  {{- end }}
  {{- with $g.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $g.securityContext | nindent 4 }}
  volumeMounts:
    - name: bouncer-rules-git
      mountPath: {{ include "bouncer.gitRoot" $ctx }}
    - name: bouncer-git-tmp
      mountPath: /tmp
    {{- if $g.auth.ssh.secretName }}
    - name: bouncer-git-secret
      mountPath: /etc/git-secret
      readOnly: true
    {{- end }}
{{- end -}}

{{/* Init containers: the first clone, then (native mode) the git-sync and bouncer sidecars, in start order. */}}
{{- define "bouncer.inject.initContainers" -}}
{{- include "bouncer.validate" . -}}
{{- if eq .Values.rules.source "gitSync" }}
{{ include "bouncer.gitSyncContainer" (dict "ctx" . "oneTime" true) }}
{{- if eq .Values.sidecar.mode "native" }}
{{ include "bouncer.gitSyncContainer" (dict "ctx" . "oneTime" false) }}
{{- end }}
{{- end }}
{{- if eq .Values.sidecar.mode "native" }}
{{ include "bouncer.container" . }}
{{- end }}
{{- end -}}

{{/* Ordinary containers bouncer adds (classic mode): bouncer and git-sync. */}}
{{- define "bouncer.inject.containers" -}}
{{- include "bouncer.validate" . -}}
{{- if eq .Values.sidecar.mode "classic" }}
{{ include "bouncer.container" . }}
{{- if eq .Values.rules.source "gitSync" }}
{{ include "bouncer.gitSyncContainer" (dict "ctx" . "oneTime" false) }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "bouncer.inject.volumes" -}}
- name: bouncer-config
  configMap:
    name: {{ include "bouncer.fullname" . }}-config
{{- if eq .Values.rules.source "gitSync" }}
- name: bouncer-rules-git
  emptyDir: {}
- name: bouncer-git-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.rules.gitSync.auth.ssh.secretName }}
- name: bouncer-git-secret
  secret:
    secretName: {{ .Values.rules.gitSync.auth.ssh.secretName }}
    defaultMode: 0440
{{- end }}
{{- else }}
- name: bouncer-rules
  configMap:
    name: {{ include "bouncer.rulesConfigMapName" . }}
{{- end }}
{{- if .Values.apiTokens.existingSecret }}
- name: bouncer-api-tokens
  secret:
    secretName: {{ .Values.apiTokens.existingSecret }}
    items:
      - key: {{ .Values.apiTokens.key }}
        path: tokens
{{- end }}
{{- end -}}

{{/* Labels the Service and PodDisruptionBudget select pods by. */}}
{{- define "bouncer.inject.podLabels" -}}
{{ include "bouncer.selectorLabels" . }}
{{- end -}}

{{/* Pod annotations: a changed bouncer.toml rolls the pods (rule changes never do: they are hot-reloaded). */}}
{{- define "bouncer.inject.podAnnotations" -}}
checksum/bouncer-config: {{ include "bouncer.toml" . | sha256sum }}
{{- end -}}

{{/* Pod-level security settings git-sync's SSH key needs. */}}
{{- define "bouncer.podSecurityContext" -}}
{{- $psc := deepCopy (default dict .Values.workload.podSecurityContext) -}}
{{- if and (eq .Values.rules.source "gitSync") .Values.rules.gitSync.auth.ssh.secretName (not (hasKey $psc "fsGroup")) -}}
{{- $_ := set $psc "fsGroup" 65533 -}}
{{- end -}}
{{- toYaml $psc -}}
{{- end -}}
