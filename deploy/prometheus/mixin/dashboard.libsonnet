// The Grafana dashboard (schema of Grafana 10/11), built without grafonnet: a few local
// constructors keep every panel's datasource the ${datasource} variable and lay panels
// out on Grafana's 24-column grid. Threshold lines come from config.libsonnet.
local ds = { type: 'prometheus', uid: '${datasource}' };

// Label matchers every tcpstate_* query carries. A regex variable set to "All" is ".*",
// which also matches a series without the label (netns before namespaces="all").
local host = 'job=~"$job", instance=~"$instance"';
local sampled = host + ', netns=~"$netns"';
local group = sampled + ', port=~"$port", process=~"$process"';
// Per-program series (the fd cliff) have no port.
local program = sampled + ', process=~"$process"';

local target(expr, legend) = { expr: expr, legendFormat: legend };

local withRefIds(targets) = [
  targets[i] { datasource: ds, refId: std.char(std.codepoint('A') + i) }
  for i in std.range(0, std.length(targets) - 1)
];

local thresholdSteps(threshold) =
  [{ color: 'green', value: null }]
  + (if threshold == null then [] else [{ color: 'red', value: threshold }]);

local panel(type, title, description, targets, unit) = {
  type: type,
  title: title,
  description: description,
  datasource: ds,
  targets: withRefIds(targets),
  fieldConfig: { defaults: { unit: unit }, overrides: [] },
};

local timeseries(title, description, targets, unit='short', threshold=null) =
  panel('timeseries', title, description, targets, unit) {
    fieldConfig+: {
      defaults+: {
        custom: {
          drawStyle: 'line',
          lineWidth: 1,
          fillOpacity: 10,
          showPoints: 'never',
          spanNulls: false,
          thresholdsStyle: { mode: if threshold == null then 'off' else 'line+area' },
        },
        thresholds: { mode: 'absolute', steps: thresholdSteps(threshold) },
      },
    },
    options: {
      legend: { displayMode: 'table', placement: 'right', showLegend: true, calcs: ['lastNotNull', 'max'] },
      tooltip: { mode: 'multi', sort: 'desc' },
    },
  };

local stat(title, description, targets, unit='short', threshold=null) =
  panel('stat', title, description, targets, unit) {
    fieldConfig+: {
      defaults+: { thresholds: { mode: 'absolute', steps: thresholdSteps(threshold) } },
    },
    options: {
      reduceOptions: { calcs: ['lastNotNull'], fields: '', values: false },
      colorMode: 'value',
      graphMode: 'area',
      textMode: 'auto',
      justifyMode: 'auto',
      orientation: 'auto',
    },
  };

local heatmap(title, description, targets) =
  panel('heatmap', title, description, [t { format: 'heatmap' } for t in targets], 's') {
    options: {
      calculate: false,
      cellGap: 1,
      color: { mode: 'scheme', scheme: 'Oranges', steps: 64, exponent: 0.5, fill: 'dark-orange', reverse: false },
      yAxis: { axisPlacement: 'left', unit: 's' },
      rowsFrame: { layout: 'auto' },
      legend: { show: true },
      tooltip: { mode: 'single', yHistogram: true },
      filterValues: { le: 1e-9 },
    },
  };

// One row per instance and network namespace, one column per query (instant queries
// merged on their labels): for settings, which change rarely.
local table(title, description, targets) =
  panel('table', title, description, [t { instant: true, format: 'table' } for t in targets], 's') {
    options: { showHeader: true, cellHeight: 'sm', footer: { show: false, reducer: ['sum'], fields: '' } },
    transformations: [
      { id: 'merge', options: {} },
      {
        id: 'organize',
        options: {
          excludeByName: { Time: true, job: true },
          renameByName: { ['Value #' + t.refId]: t.legendFormat for t in withRefIds(targets) },
        },
      },
    ],
  };

// The fleet's worst groups for one signal, from a recording rule (deploy/prometheus,
// rules.libsonnet): one row per group, its labels as columns, the worst first.
local ranking(title, description, expr, unit='short') =
  panel('table', title, description, [target(expr, title) { instant: true, format: 'table' }], unit) {
    options: { showHeader: true, cellHeight: 'sm', footer: { show: false, reducer: ['sum'], fields: '' } },
    transformations: [
      {
        id: 'organize',
        options: {
          excludeByName: { Time: true, __name__: true, job: true, state: true },
          renameByName: { Value: title },
        },
      },
      { id: 'sortBy', options: { sort: [{ field: title, desc: true }] } },
    ],
  };

local variable(name, label, query) = {
  type: 'query',
  name: name,
  label: label,
  datasource: ds,
  definition: query,
  query: { query: query, refId: 'PrometheusVariableQueryEditor-VariableQuery' },
  refresh: 2,
  includeAll: true,
  allValue: '.*',
  multi: true,
  sort: 1,
  regex: '',
  hide: 0,
  current: { selected: true, text: ['All'], value: ['$__all'] },
  options: [],
};

// Lays rows out top to bottom. Each row is a title and a list of lines; a line is a
// height and panels with widths summing to 24. Ids are assigned in order.
local layout(rows) =
  local place(acc, row) =
    local rowPanel = {
      type: 'row',
      title: row.title,
      collapsed: std.get(row, 'collapsed', false),
      gridPos: { h: 1, w: 24, x: 0, y: acc.y },
      panels: [],
    };
    local lines = std.get(row, 'lines', []);
    local placeLine(lacc, line) = {
      y: lacc.y + line.h,
      panels: lacc.panels + [
        line.panels[i].panel {
          gridPos: {
            h: line.h,
            w: line.panels[i].w,
            x: std.foldl(function(x, p) x + p.w, line.panels[0:i], 0),
            y: lacc.y,
          },
        }
        for i in std.range(0, std.length(line.panels) - 1)
      ],
    };
    local placed = std.foldl(placeLine, lines, { y: acc.y + 1, panels: [] });
    { y: placed.y, panels: acc.panels + [rowPanel] + placed.panels };
  local all = std.foldl(place, rows, { y: 0, panels: [] }).panels;
  [all[i] { id: i + 1 } for i in std.range(0, std.length(all) - 1)];

local w(width, p) = { w: width, panel: p };

{
  grafanaDashboards+:: {
    local c = $._config,
    'tcpstate-exporter.json': {
      uid: c.dashboardUID,
      title: 'tcpstate-exporter: TCP states and CLOSE_WAIT',
      description: 'Which ports and processes hold CLOSE_WAIT connections, for how long, and why (tcpstate-exporter).',
      tags: c.dashboardTags,
      editable: true,
      graphTooltip: 1,
      schemaVersion: 39,
      version: 1,
      time: { from: 'now-6h', to: 'now' },
      timepicker: {},
      timezone: 'browser',
      refresh: '30s',
      fiscalYearStartMonth: 0,
      liveNow: false,
      links: [],
      annotations: {
        list: [{
          builtIn: 1,
          datasource: { type: 'grafana', uid: '-- Grafana --' },
          enable: true,
          hide: true,
          iconColor: 'rgba(0, 211, 255, 1)',
          name: 'Annotations & Alerts',
          type: 'dashboard',
        }],
      },
      templating: {
        list: [
          {
            type: 'datasource',
            name: 'datasource',
            label: 'Data source',
            query: 'prometheus',
            regex: '',
            hide: 0,
            refresh: 1,
            current: {},
            options: [],
          },
          variable('job', 'Job', 'label_values(tcpstate_build_info, job)'),
          variable('instance', 'Instance', 'label_values(tcpstate_build_info{job=~"$job"}, instance)'),
          variable('netns', 'Network namespace', 'label_values(tcpstate_sockets{%s}, netns)' % host),
          variable('port', 'Port', 'label_values(tcpstate_connections{%s}, port)' % sampled),
          variable('process', 'Process', 'label_values(tcpstate_connections{%s}, process)' % sampled),
        ],
      },
      panels: layout([
        {
          title: 'Overview',
          lines: [
            { h: 5, panels: [
              w(6, stat('CLOSE_WAIT sockets', 'All sockets in CLOSE_WAIT, every port and process.', [
                target('sum(tcpstate_sockets{%s, state="close_wait"})' % sampled, 'CLOSE_WAIT'),
              ])),
              w(6, stat('Oldest CLOSE_WAIT', 'Age of the oldest CLOSE_WAIT connection among the selected groups; red past the TcpStateCloseWaitStuck threshold.', [
                target('max(tcpstate_close_wait_oldest_seconds{%s})' % group, 'oldest'),
              ], 's', c.closeWaitStuck.ageSeconds)),
              w(6, stat('CLOSE_WAIT holding unread data', 'CLOSE_WAIT connections whose program left received data unread: it stopped reading.', [
                target('sum(tcpstate_unread_connections{%s, state="close_wait"})' % group, 'unread'),
              ])),
              w(6, stat('Fullest accept queue', 'The fullest listener accept queue, as a share of its backlog; red past the TcpStateAcceptQueueNearLimit threshold.', [
                target('max(tcpstate_listen_queue_length{%s} / (tcpstate_listen_queue_max{%s} > 0))' % [group, group], 'fill'),
              ], 'percentunit', c.acceptQueue.ratio)),
            ] },
            { h: 8, panels: [
              w(24, timeseries('Sockets per state', 'Every TCP socket of the sampled namespaces, per state.', [
                target('sum by (state) (tcpstate_sockets{%s})' % sampled, '{{state}}'),
              ])),
            ] },
          ],
        },
        // The worst groups of every instance and pod, whatever the variables select: read
        // from the fleet recording rules, so a 1,000-node Prometheus ranks them once per
        // evaluation, not once per panel refresh and viewer.
        {
          title: 'Fleet: the worst groups of every instance',
          lines: [
            { h: 8, panels: [
              w(8, ranking('Never closed: stuck CLOSE_WAIT', "Groups with the most CLOSE_WAIT connections older than the exporter's close_wait.stuck_after, across every instance and pod (recording rule tcpstate_fleet:close_wait_stuck_connections:topk, the worst %d)." % c.fleet.topk,
                           'tcpstate_fleet:close_wait_stuck_connections:topk{job=~"$job"}')),
              w(8, ranking('Oldest CLOSE_WAIT', 'Groups whose oldest CLOSE_WAIT connection is the oldest, across the fleet (tcpstate_fleet:close_wait_oldest_seconds:topk).',
                           'tcpstate_fleet:close_wait_oldest_seconds:topk{job=~"$job"}', 's')),
              w(8, ranking('Growing fastest', 'Groups whose CLOSE_WAIT count grew the most over the last %s (tcpstate_fleet:close_wait_growth:topk), the TcpStateCloseWaitGrowing signal.' % c.closeWaitGrowth.window,
                           'tcpstate_fleet:close_wait_growth:topk{job=~"$job"}')),
            ] },
            { h: 8, panels: [
              w(8, ranking('Accept backlog: never accepted', 'Groups with the most CLOSE_WAIT connections still in an accept queue (tcpstate_fleet:close_wait_unaccepted:topk).',
                           'tcpstate_fleet:close_wait_unaccepted:topk{job=~"$job"}')),
              w(8, ranking('Closed late: p%g time before the close' % (c.closeWaitClosedLate.quantile * 100), 'Groups whose closed CLOSE_WAIT connections waited the longest over the last %s (tcpstate_fleet:close_wait_closed_seconds:topk).' % c.closeWaitClosedLate.window,
                           'tcpstate_fleet:close_wait_closed_seconds:topk{job=~"$job"}', 's')),
              w(8, ranking('Nearest the fd cliff', 'Programs with the largest share of their soft RLIMIT_NOFILE open (tcpstate_fleet:process_fd_usage_ratio:topk): where TcpStateFdExhaustionPredicted looks.',
                           'tcpstate_fleet:process_fd_usage_ratio:topk{job=~"$job"}', 'percentunit')),
            ] },
            { h: 8, panels: [
              w(24, timeseries('CLOSE_WAIT per instance (the 10 most)', 'All CLOSE_WAIT sockets of each instance (tcpstate_instance:close_wait_connections:sum), the 10 instances holding the most.', [
                target('topk(10, tcpstate_instance:close_wait_connections:sum{job=~"$job"})', '{{instance}}'),
              ])),
            ] },
          ],
        },
        {
          title: 'CLOSE_WAIT',
          lines: [
            { h: 8, panels: [
              w(12, timeseries('CLOSE_WAIT by port', 'Inbound: the local (listening) port. Outbound: the remote port. port="other", process="other" is the fold bucket.', [
                target('sum by (netns, direction, port) (tcpstate_connections{%s, state="close_wait"})' % group, '{{direction}} {{port}} {{netns}}'),
              ])),
              w(12, timeseries('CLOSE_WAIT by process', 'The owning process (comm); empty for orphaned sockets.', [
                target('sum by (netns, process) (tcpstate_connections{%s, state="close_wait"})' % group, '{{process}} {{netns}}'),
              ])),
            ] },
            { h: 8, panels: [
              w(12, timeseries('Oldest CLOSE_WAIT age', 'Per group, how long its oldest CLOSE_WAIT connection has waited to be closed (cause 1 when it only grows). Line: the TcpStateCloseWaitStuck threshold.', [
                target('max by (netns, direction, port, process) (tcpstate_close_wait_oldest_seconds{%s})' % group, '{{direction}} {{port}} {{process}} {{netns}}'),
              ], 's', c.closeWaitStuck.ageSeconds)),
              w(12, heatmap('Time in CLOSE_WAIT before close', 'Connections closed per bucket of time spent in CLOSE_WAIT. Many in the high buckets: closed late (cause 2).', [
                target('sum by (le) (increase(tcpstate_close_wait_duration_seconds_bucket{%s}[$__rate_interval]))' % group, '{{le}}'),
              ])),
            ] },
            { h: 8, panels: [
              w(8, timeseries('CLOSE_WAIT duration quantiles', 'Time in CLOSE_WAIT of the connections closed recently. Line: the TcpStateCloseWaitClosedLate threshold.', [
                target('histogram_quantile(%g, sum by (le, direction, port, process) (rate(tcpstate_close_wait_duration_seconds_bucket{%s}[$__rate_interval])))' % [q, group], 'p%g {{direction}} {{port}} {{process}}' % (q * 100))
                for q in [0.5, 0.9, 0.99]
              ], 's', c.closeWaitClosedLate.seconds)),
              w(8, timeseries('CLOSE_WAIT closed per second', 'CLOSE_WAIT connections leaving the state (closed by their program, or gone).', [
                target('sum by (netns, direction, port, process) (rate(tcpstate_close_wait_duration_seconds_count{%s}[$__rate_interval]))' % group, '{{direction}} {{port}} {{process}} {{netns}}'),
              ], 'ops')),
              w(8, timeseries('CLOSE_WAIT entered per second (events mode)', 'Connections entering CLOSE_WAIT, seen by the eBPF events mode only: empty when the exporter samples by polling alone.', [
                target('sum by (netns, direction, port, process) (rate(tcpstate_close_wait_entered_total{%s}[$__rate_interval]))' % group, '{{direction}} {{port}} {{process}} {{netns}}'),
              ], 'ops')),
            ] },
          ],
        },
        {
          title: 'Queues',
          lines: [
            { h: 8, panels: [
              w(8, timeseries('Unread bytes in CLOSE_WAIT', 'Received data the program never read (the peer\'s FIN not counted).', [
                target('sum by (netns, direction, port, process) (tcpstate_recv_queue_bytes{%s, state="close_wait"})' % group, '{{direction}} {{port}} {{process}} {{netns}}'),
              ], 'bytes')),
              w(8, timeseries('CLOSE_WAIT connections holding unread data', 'The article\'s tell-tale: Recv-Q non-zero in CLOSE_WAIT, a program that stopped reading.', [
                target('sum by (netns, direction, port, process) (tcpstate_unread_connections{%s, state="close_wait"})' % group, '{{direction}} {{port}} {{process}} {{netns}}'),
              ])),
              w(8, timeseries('Unsent bytes in CLOSE_WAIT', 'Send queue of CLOSE_WAIT connections: data written but not yet acknowledged by the peer.', [
                target('sum by (netns, direction, port, process) (tcpstate_send_queue_bytes{%s, state="close_wait"})' % group, '{{direction}} {{port}} {{process}} {{netns}}'),
              ], 'bytes')),
            ] },
            { h: 8, panels: [
              w(12, timeseries('Accept queue vs limit', 'Connections waiting to be accepted, against the backlog the listener asked for (cause 3 when it fills).', [
                target('sum by (netns, port, process) (tcpstate_listen_queue_length{%s})' % group, 'queued {{port}} {{process}} {{netns}}'),
                target('sum by (netns, port, process) (tcpstate_listen_queue_max{%s})' % group, 'limit {{port}} {{process}} {{netns}}'),
              ])),
              w(12, timeseries('Accept queue fill', 'Accept queue length over its limit. Line: the TcpStateAcceptQueueNearLimit threshold.', [
                target('tcpstate_listen_queue_length{%s} / (tcpstate_listen_queue_max{%s} > 0)' % [group, group], '{{port}} {{process}} {{netns}}'),
              ], 'percentunit', c.acceptQueue.ratio)),
            ] },
          ],
        },
        {
          title: 'Exporter health',
          lines: [
            { h: 7, panels: [
              w(6, stat('Scrape up', '1 when Prometheus scraped the exporter.', [
                target('up{%s}' % host, '{{instance}}'),
              ])),
              w(6, timeseries('Sample duration', 'Time one sample of the kernel TCP table took.', [
                target('tcpstate_sample_duration_seconds{%s}' % sampled, '{{instance}} {{netns}}'),
              ], 's')),
              w(6, timeseries('Sample errors per second', 'Failed samples by reason; the exporter keeps serving its last good sample.', [
                target('sum by (instance, netns, reason) (rate(tcpstate_sample_errors_total{%s}[$__rate_interval]))' % sampled, '{{instance}} {{netns}} {{reason}}'),
              ], 'ops')),
              w(6, timeseries('Age of the data served', 'Time since the last good sample. Line: the TcpStateDataStale threshold.', [
                target('time() - tcpstate_last_sample_timestamp_seconds{%s}' % sampled, '{{instance}} {{netns}}'),
              ], 's', c.stale.ageSeconds)),
            ] },
            { h: 7, panels: [
              w(6, timeseries('Groups folded into port="other"', 'Groups over max_groups, folded into port="other", process="other".', [
                target('tcpstate_groups_folded{%s}' % sampled, '{{instance}} {{netns}}'),
              ])),
              w(6, timeseries('Exporter memory', 'Resident memory of the exporter process.', [
                target('process_resident_memory_bytes{%s}' % host, '{{instance}}'),
              ], 'bytes')),
              w(6, timeseries('Exporter CPU', 'CPU seconds per second used by the exporter process.', [
                target('rate(process_cpu_seconds_total{%s}[$__rate_interval])' % host, '{{instance}}'),
              ], 'percentunit')),
              w(6, stat('Version', 'tcpstate-exporter build.', [
                target('count by (version) (tcpstate_build_info{%s})' % host, '{{version}}'),
              ]) { options+: { textMode: 'name', graphMode: 'none' } }),
            ] },
            { h: 7, panels: [
              w(24, timeseries('Pods followed by events, their full dumps, and how tables are walked', "Namespaces on the host's shared TCP hash served from event-fed tables, without a walk of the host's table, and full dumps of such namespaces per second by reason: first (table built, also after lost events), period (reconcile_period), mismatch (the kernel counted sockets the table lacked), too_large; and the sockets those tables refreshed per second, via their holders' descriptors or exact lookups (lookups cost more: a lookup rate near the descriptor rate means many sockets have no known holder). A steady mismatch rate means the following costs walks again: README, 'Many pods on one node'. Table walks per second by how: bpf_iterator (the exporter's own namespace, one BPF tcp iterator pass, ~0.8x a dump's CPU) or sock_diag (other namespaces, or BPF not allowed): an own namespace walked by sock_diag where CAP_BPF is granted means the iterator was refused or failed (the log says why).", [
                target('tcpstate_namespaces_followed{%s}' % host, '{{instance}} followed'),
                target('sum by (instance, reason) (rate(tcpstate_followed_namespace_dumps_total{%s}[$__rate_interval]))' % host, '{{instance}} dumps/s {{reason}}'),
                target('sum by (instance, via) (rate(tcpstate_followed_socket_refreshes_total{%s}[$__rate_interval]))' % host, '{{instance}} sockets refreshed/s via {{via}}'),
                target('sum by (instance, via) (rate(tcpstate_table_walks_total{%s}[$__rate_interval]))' % host, '{{instance}} table walks/s via {{via}}'),
              ], 'short')),
            ] },
          ],
        },
        // The evidence for the article's three causes, side by side per port and process:
        // what `tcpstate-exporter snapshot --watch` turns into a verdict (docs/runbook.md,
        // "Diagnosis"). Every query returns a series (zeros included) wherever CLOSE_WAIT
        // exists, so an empty panel means no CLOSE_WAIT, not a broken query.
        {
          title: 'Diagnosis',
          lines: [
            { h: 8, panels: [
              w(8, timeseries('Cause 1: EOF read and ignored vs EOF unread', "CLOSE_WAIT connections per group. 'EOF read, stuck': older than the exporter's close_wait.stuck_after, the program's recv() returned 0 (Recv-Q 0) and it still did not close: it saw the peer leave and ignored it, the purest form of cause 1 (never closed), a bug to fix in the code (a missing close() after the read loop, an exception path); younger ones prove nothing (a program may read the EOF and close a moment later). 'EOF unread': the program has not read to the end at all: stuck or slow (cause 1 when it never resumes, cause 2 when it resumes late). Alert: TcpStateCloseWaitEofIgnored.", [
                target('sum by (netns, direction, port, process) (tcpstate_close_wait_stuck_eof_read_connections{%s})' % group, 'EOF read, stuck {{direction}} {{port}} {{process}} {{netns}}'),
                target(|||
                  sum by (netns, direction, port, process) (tcpstate_connections{%s, state="close_wait"})
                  - sum by (netns, direction, port, process) (tcpstate_close_wait_eof_read_connections{%s})
                ||| % [group, group], 'EOF unread {{direction}} {{port}} {{process}} {{netns}}'),
              ])),
              w(8, timeseries('Cause 1 or 2: oldest age vs how long closes took', "Per group, the age of the oldest CLOSE_WAIT connection (solid) against p90 of the time the connections closed recently spent in CLOSE_WAIT. Never closed (cause 1): the oldest age climbs without bound and closes are few or none (p90 absent). Closed late (cause 2): the oldest age stays bounded and p90 is high: the program does close, after the peer gave up. Line: the TcpStateCloseWaitClosedLate threshold.", [
                target('max by (netns, direction, port, process) (tcpstate_close_wait_oldest_seconds{%s})' % group, 'oldest {{direction}} {{port}} {{process}} {{netns}}'),
                target('histogram_quantile(%g, sum by (le, netns, direction, port, process) (rate(tcpstate_close_wait_duration_seconds_bucket{%s}[$__rate_interval])))' % [c.closeWaitClosedLate.quantile, group], 'p%g closed {{direction}} {{port}} {{process}} {{netns}}' % (c.closeWaitClosedLate.quantile * 100)),
              ], 's', c.closeWaitClosedLate.seconds)),
              w(8, timeseries('Cause 1 or 2: closes per second, and those after %ss' % c.closeWaitClosedLate.seconds, "CLOSE_WAIT connections leaving the state per second, and those among them that waited more than %s s (the duration histogram's buckets above le=%s). Few or no closes while CLOSE_WAIT grows: never closed (cause 1). Many closes, most of them in the high buckets: closed late (cause 2), responses slower than the peer's timeout." % [c.closeWaitClosedLate.seconds, c.closeWaitClosedLate.seconds], [
                target('sum by (netns, direction, port, process) (rate(tcpstate_close_wait_duration_seconds_count{%s}[$__rate_interval]))' % group, 'all {{direction}} {{port}} {{process}} {{netns}}'),
                target(|||
                  sum by (netns, direction, port, process) (rate(tcpstate_close_wait_duration_seconds_count{%s}[$__rate_interval]))
                  - sum by (netns, direction, port, process) (rate(tcpstate_close_wait_duration_seconds_bucket{%s, le="%s"}[$__rate_interval]))
                ||| % [group, group, c.closeWaitClosedLate.seconds], 'after %ss {{direction}} {{port}} {{process}} {{netns}}' % c.closeWaitClosedLate.seconds),
              ], 'ops')),
            ] },
            { h: 8, panels: [
              w(8, timeseries('Cause 3: CLOSE_WAIT never accepted vs accept queue', "CLOSE_WAIT connections still in a listener's accept queue: the peer gave up before the program ever called accept() (cause 3, accept backlog; alert TcpStateCloseWaitAcceptBacklog when they are half or more of the group's). Against them the queue's length and its limit (backlog, capped by somaxconn). Never-accepted CLOSE_WAIT with a queue at its limit: the program accepts too slowly; raise the accept rate, not only the backlog.", [
                target('sum by (netns, port, process) (tcpstate_close_wait_unaccepted{%s})' % group, 'never accepted {{port}} {{process}} {{netns}}'),
                target('sum by (netns, port, process) (tcpstate_listen_queue_length{%s})' % group, 'queued {{port}} {{process}} {{netns}}'),
                target('sum by (netns, port, process) (tcpstate_listen_queue_max{%s})' % group, 'limit {{port}} {{process}} {{netns}}'),
              ])),
              w(8, timeseries('Cause 3: listen overflows and drops per second', "Per network namespace (the kernel counts them per namespace, not per port): connections refused because an accept queue was full (TcpExt ListenOverflows), and SYNs dropped at listeners, overflows included (ListenDrops). Sustained overflows: a backlog the program cannot drain (cause 3); its peers retry, wait, and give up. Alert: TcpStateListenOverflows.", [
                target('sum by (instance, netns) (rate(tcpstate_listen_overflows_total{%s}[$__rate_interval]))' % sampled, 'overflows {{instance}} {{netns}}'),
                target('sum by (instance, netns) (rate(tcpstate_listen_drops_total{%s}[$__rate_interval]))' % sampled, 'drops {{instance}} {{netns}}'),
              ], 'ops')),
              w(8, timeseries('Keepalive armed on CLOSE_WAIT', "Share of each group's CLOSE_WAIT connections with a keepalive timer armed. Keepalive is a mitigation, not a cure for any of the three causes: it only reaps connections whose peer host vanished, after tcp_keepalive_time + intvl x probes (over 2 h by default; see the settings table), and never one whose peer is alive. 0%: nothing will reap these but the program.", [
                target(|||
                  sum by (netns, direction, port, process) (tcpstate_close_wait_keepalive_connections{%s})
                  / sum by (netns, direction, port, process) (tcpstate_connections{%s, state="close_wait"})
                ||| % [group, group], '{{direction}} {{port}} {{process}} {{netns}}'),
              ], 'percentunit')),
            ] },
            { h: 8, panels: [
              w(12, timeseries('The fd cliff: open descriptors vs limit', "Every leaked socket is a file descriptor. Per program owning connections in a detail state, the open descriptors of its process nearest its limit (solid) and that process's soft RLIMIT_NOFILE: when they meet, accept() fails with EMFILE and the program stops serving. Alert: TcpStateFdExhaustionPredicted, when the open descriptors of a program whose CLOSE_WAIT grows are on course to reach the limit within %dh." % (c.fdExhaustion.horizonSeconds / 3600), [
                target('max by (instance, netns, process) (tcpstate_process_open_fds{%s})' % program, 'open {{process}} {{instance}} {{netns}}'),
                target('min by (instance, netns, process) (tcpstate_process_max_fds{%s})' % program, 'limit {{process}} {{instance}} {{netns}}'),
              ])),
              w(12, timeseries('The fd cliff: share of the limit used, and in %dh at this rate' % (c.fdExhaustion.horizonSeconds / 3600), "Open descriptors over the soft limit, now (solid) and extrapolated over the last %s as TcpStateFdExhaustionPredicted does; 100%%: the cliff." % c.fdExhaustion.window, [
                target('max by (instance, netns, process) (tcpstate_process_open_fds{%s} / (tcpstate_process_max_fds{%s} > 0))' % [program, program], 'now {{process}} {{instance}} {{netns}}'),
                target('max by (instance, netns, process) (predict_linear(tcpstate_process_open_fds{%s}[%s], %d) / (tcpstate_process_max_fds{%s} > 0))' % [program, c.fdExhaustion.window, c.fdExhaustion.horizonSeconds, program], 'in %dh {{process}} {{instance}} {{netns}}' % (c.fdExhaustion.horizonSeconds / 3600)),
              ], 'percentunit', 1)),
            ] },
            { h: 6, panels: [
              w(24, table('Namespace TCP settings', "The sysctls the article names, per network namespace. tcp_fin_timeout bounds the peer's orphaned FIN_WAIT2, never CLOSE_WAIT (nothing in the kernel does). Keepalive time / interval / probes: how long before keepalive reaps a connection whose peer vanished (mitigation only). somaxconn caps every listener's backlog: raising a backlog past it does nothing (cause 3).", [
                target('max by (instance, netns) (tcpstate_tcp_fin_timeout_seconds{%s})' % sampled, 'tcp_fin_timeout'),
                target('max by (instance, netns) (tcpstate_tcp_keepalive_time_seconds{%s})' % sampled, 'keepalive time'),
                target('max by (instance, netns) (tcpstate_tcp_keepalive_interval_seconds{%s})' % sampled, 'keepalive interval'),
                target('max by (instance, netns) (tcpstate_tcp_keepalive_probes{%s})' % sampled, 'keepalive probes'),
                target(|||
                  max by (instance, netns) (
                    tcpstate_tcp_keepalive_time_seconds{%s}
                    + tcpstate_tcp_keepalive_interval_seconds{%s} * tcpstate_tcp_keepalive_probes{%s}
                  )
                ||| % [sampled, sampled, sampled], 'keepalive reaps after'),
                target('max by (instance, netns) (tcpstate_somaxconn{%s})' % sampled, 'somaxconn'),
              ]) {
                fieldConfig+: {
                  overrides: [
                    { matcher: { id: 'byName', options: name }, properties: [{ id: 'unit', value: 'short' }] }
                    for name in ['keepalive probes', 'somaxconn']
                  ],
                },
              }),
            ] },
          ],
        },
      ]),
    },
  },
}
