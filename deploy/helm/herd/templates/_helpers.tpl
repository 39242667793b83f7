{{/* Labels of one role's objects. */}}
{{- define "herd.labels" -}}
app.kubernetes.io/name: herd
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
app.kubernetes.io/part-of: herd
{{- end }}

{{/* Selector labels of one role's pods. */}}
{{- define "herd.selector" -}}
app.kubernetes.io/name: herd
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end }}

{{/* Name of the NATS credentials Secret. */}}
{{- define "herd.natsSecret" -}}
{{- .Values.nats.existingSecret | default (printf "%s-nats" .Release.Name) -}}
{{- end }}

{{/* Name of the HTTP token and webhook Secret. */}}
{{- define "herd.secrets" -}}
{{- .Values.secrets.existingSecret | default (printf "%s-secrets" .Release.Name) -}}
{{- end }}

{{/* The environment every role shares: the NATS URL with its credentials. */}}
{{- define "herd.natsEnv" -}}
- name: NATS_USER
  valueFrom: {secretKeyRef: {name: {{ include "herd.natsSecret" . }}, key: user}}
- name: NATS_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ include "herd.natsSecret" . }}, key: password}}
- name: HERD_NATS
  value: nats://$(NATS_USER):$(NATS_PASSWORD)@{{ .Values.nats.address }}
{{- end }}

{{/* A herd container's security context. */}}
{{- define "herd.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end }}

{{/* A herd pod's security context. */}}
{{- define "herd.podSecurity" -}}
runAsNonRoot: true
runAsUser: 65532
seccompProfile: {type: RuntimeDefault}
{{- end }}
