// tcpstate-exporter monitoring mixin: alerts, recording rules and dashboard from one config.
// Import it into your own jsonnet and override `_config` fields to change thresholds.
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'rules.libsonnet') +
(import 'dashboard.libsonnet')
