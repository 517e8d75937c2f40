// Renders every generated file of the mixin, keyed by its path in the repo.
// `overrides` is merged (JSON merge patch) into _config: empty for the shipped files,
// short `for:` windows and small thresholds for the end-to-end test's copy.
function(overrides={})
  // An override of a key the config does not have is a typo: fail instead of ignoring it.
  local known(base, patch, path) = std.foldl(function(a, b) a && b, [
    if !std.objectHas(base, k) then error 'unknown config key: ' + path + k
    else if std.isObject(patch[k]) then known(base[k], patch[k], path + k + '.')
    else true
    for k in std.objectFields(patch)
  ], true);
  local defaults = (import 'mixin.libsonnet')._config;
  assert known(defaults, overrides, '');
  local mixin = (import 'mixin.libsonnet') + {
    _config:: std.mergePatch(super._config, overrides),
  };
  local c = mixin._config;
  local row(name, spec, when) =
    '| [%s](#%s) | %s | %s | %s |' % [name, std.asciiLower(name), spec.severity, when, spec['for']];
  {
    // Data, not text: build.py writes it (jsonnet 0.18's own YAML/JSON manifesting takes
    // seconds per file).
    // One rules file for both, so every deployment loads them together: the recording
    // rules (the fleet view) first, then the alerts.
    'deploy/prometheus/tcpstate-alerts.yml': {
      groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups,
    },
    'dashboards/tcpstate-exporter.json': mixin.grafanaDashboards['tcpstate-exporter.json'],
    // The table between the thresholds markers of docs/runbook.md.
    'docs/runbook.md#thresholds': std.join('\n', [
      '| Alert | Severity | Fires when | For |',
      '| --- | --- | --- | --- |',
      row('TcpStateCloseWaitGrowing', c.closeWaitGrowth, 'a group\'s CLOSE_WAIT count rose by >= %(minIncrease)s over %(window)s and is still rising' % c.closeWaitGrowth),
      row('TcpStateCloseWaitStuck', c.closeWaitStuck, 'a group\'s oldest CLOSE_WAIT connection is older than %(ageSeconds)s s (unless the group is an accept backlog)' % c.closeWaitStuck),
      row('TcpStateCloseWaitClosedLate', c.closeWaitClosedLate, 'p%g of the time spent in CLOSE_WAIT by connections closed in %s is over %s s, over >= %s closes' % [c.closeWaitClosedLate.quantile * 100, c.closeWaitClosedLate.window, c.closeWaitClosedLate.seconds, c.closeWaitClosedLate.minCloses]),
      row('TcpStateFdExhaustionPredicted', c.fdExhaustion, 'a program whose CLOSE_WAIT grew over %s has open descriptors that, extrapolated over %s, reach its soft RLIMIT_NOFILE within %dh' % [c.fdExhaustion.window, c.fdExhaustion.window, c.fdExhaustion.horizonSeconds / 3600]),
      row('TcpStateAcceptQueueNearLimit', c.acceptQueue, 'a listener\'s accept queue is over %g%% of its backlog' % (c.acceptQueue.ratio * 100)),
      row('TcpStateCloseWaitEofIgnored', c.closeWaitEofIgnored, 'a group holds >= %(minConnections)s CLOSE_WAIT connections older than close_wait.stuck_after whose EOF its program read' % c.closeWaitEofIgnored),
      row('TcpStateCloseWaitAcceptBacklog', c.closeWaitAcceptBacklog, 'a group holds >= %(minConnections)s CLOSE_WAIT connections in an accept queue, half or more of its CLOSE_WAIT' % c.closeWaitAcceptBacklog),
      row('TcpStateListenOverflows', c.listenOverflows, 'a namespace\'s accept queues overflowed >= %(minIncrease)s times in %(window)s' % c.listenOverflows),
      row('TcpStateExporterDown', c.exporterDown, '`up{%s} == 0`' % c.jobSelector),
      row('TcpStateSampleErrors', c.sampleErrors, 'samples failed in the last %(window)s' % c.sampleErrors),
      row('TcpStateDataStale', c.stale, 'the last good sample is older than %(ageSeconds)s s' % c.stale),
      row('TcpStateGroupsFolded', c.groupsFolded, 'groups are folded into port="other", process="other"'),
    ]) + '\n',
  }
