// Alert rules. Thresholds come from config.libsonnet; nothing numeric is written here.
// Annotations name the port, the process and, where the series carries them, the pod and
// the network namespace: labels that are absent render as nothing.
local where = {
  // "inbound on local port 8080" / "outbound to remote port 5432" / the fold bucket.
  port: '{{ if eq $labels.port "other" }}{{ $labels.direction }} on folded ports (port="other"){{ else if eq $labels.direction "outbound" }}outbound to remote port {{ $labels.port }}{{ else }}inbound on local port {{ $labels.port }}{{ end }}',
  // Orphaned sockets carry process="", which Prometheus drops: say so instead of "".
  process: '{{ with $labels.process }}process {{ . }}{{ else }}no owning process (orphaned sockets){{ end }}',
  // Present only when the exporter samples more than its own namespace / on Kubernetes.
  context: '{{ with $labels.pod }}, pod {{ $labels.namespace }}/{{ . }}{{ with $labels.container }} container {{ . }}{{ end }}{{ end }}{{ with $labels.netns }}, netns {{ . }}{{ end }}, instance {{ $labels.instance }}',
  group: self.port + ', ' + self.process + self.context,
  // The groups `snapshot` calls "accept backlog": half or more of their CLOSE_WAIT
  // connections are still in an accept queue. The stuck alert leaves them to the backlog
  // alert, so that one group gets one cause.
  backlogged: |||
    (
      tcpstate_close_wait_unaccepted >= %(minConnections)s
      and
      tcpstate_close_wait_unaccepted * 2 >= ignoring(state) tcpstate_connections{state="close_wait"}
    )
  |||,
  listener: 'listener on port {{ $labels.port }}, ' + self.process + self.context,
};

{
  prometheusAlerts+:: {
    local c = $._config,
    local alert(name, spec, expr, summary, description) = {
      alert: name,
      expr: expr,
      'for': spec['for'],
      labels: { severity: spec.severity },
      annotations: {
        summary: summary,
        description: description,
        runbook_url: c.runbookURLBase + '#' + std.asciiLower(name),
      },
    },

    groups+: [
      {
        name: 'tcpstate-close-wait',
        rules: [
          alert(
            'TcpStateCloseWaitGrowing',
            c.closeWaitGrowth,
            |||
              (
                delta(tcpstate_connections{state="close_wait"}[%(window)s]) >= %(minIncrease)s
              )
              and
              (
                deriv(tcpstate_connections{state="close_wait"}[%(window)s]) > 0
              )
            ||| % c.closeWaitGrowth,
            'CLOSE_WAIT connections keep piling up.',
            'CLOSE_WAIT connections %s grew by {{ $value | humanize }} in the last %s and are still growing: the program is not closing connections its peers have closed.' % [where.group, c.closeWaitGrowth.window],
          ),
          alert(
            'TcpStateCloseWaitStuck',
            c.closeWaitStuck,
            (|||
              tcpstate_close_wait_oldest_seconds > %(ageSeconds)s
              unless
            ||| % c.closeWaitStuck) + (where.backlogged % c.closeWaitAcceptBacklog),
            'A CLOSE_WAIT connection is never being closed.',
            'The oldest CLOSE_WAIT connection %s has waited {{ $value | humanizeDuration }} for its program to close it: a leaked socket.' % where.group,
          ),
          alert(
            'TcpStateCloseWaitClosedLate',
            c.closeWaitClosedLate,
            |||
              (
                histogram_quantile(%(quantile)g, rate(tcpstate_close_wait_duration_seconds_bucket[%(window)s])) > %(seconds)s
              )
              and
              (
                increase(tcpstate_close_wait_duration_seconds_count[%(window)s]) >= %(minCloses)s
              )
            ||| % c.closeWaitClosedLate,
            'Connections are closed long after their peers gave up.',
            'p%g of the time CLOSE_WAIT connections %s waited before their program closed them, over the last %s, is {{ $value | humanizeDuration }} (threshold %ss): responses slower than the peer waits.' % [c.closeWaitClosedLate.quantile * 100, where.group, c.closeWaitClosedLate.window, c.closeWaitClosedLate.seconds],
          ),
          alert(
            'TcpStateCloseWaitEofIgnored',
            c.closeWaitEofIgnored,
            |||
              tcpstate_close_wait_stuck_eof_read_connections >= %(minConnections)s
            ||| % c.closeWaitEofIgnored,
            'A program read the EOF of connections and did not close them.',
            '{{ $value | humanize }} CLOSE_WAIT connections %s were read to EOF (Recv-Q 0) by their program and not closed, are older than the exporter\'s close_wait.stuck_after, and the group has held such connections for %s: a missing close() after the read loop or on an error path.' % [where.group, c.closeWaitEofIgnored['for']],
          ),
          alert(
            'TcpStateCloseWaitAcceptBacklog',
            c.closeWaitAcceptBacklog,
            where.backlogged % c.closeWaitAcceptBacklog,
            'CLOSE_WAIT connections wait in an accept queue: their peers gave up before the program accepted them.',
            '{{ $value | humanize }} CLOSE_WAIT connections %s, half or more of the group\'s, are still in an accept queue, and the group has held such connections for %s: the program accepts more slowly than its peers wait.' % [where.group, c.closeWaitAcceptBacklog['for']],
          ),
          alert(
            'TcpStateFdExhaustionPredicted',
            c.fdExhaustion,
            |||
              (
                predict_linear(tcpstate_process_open_fds[%(window)s], %(horizonSeconds)s)
                >= tcpstate_process_max_fds
              )
              and on (job, instance, netns, process)
              (
                sum by (job, instance, netns, process) (delta(tcpstate_connections{state="close_wait"}[%(window)s])) > 0
              )
            ||| % c.fdExhaustion,
            'A program leaking CLOSE_WAIT connections will run out of file descriptors.',
            'The open file descriptors of %s, extrapolated from the last %s, reach its soft RLIMIT_NOFILE within %dh ({{ $value | humanize }} open by then) while its CLOSE_WAIT connections grow: then accept() fails with EMFILE and it stops serving.' % [where.process + where.context, c.fdExhaustion.window, c.fdExhaustion.horizonSeconds / 3600],
          ),
          alert(
            'TcpStateAcceptQueueNearLimit',
            c.acceptQueue,
            |||
              tcpstate_listen_queue_length / (tcpstate_listen_queue_max > 0) > %(ratio)g
            ||| % c.acceptQueue,
            'A listen socket accept queue is nearly full.',
            'The accept queue of the %s is {{ $value | humanizePercentage }} full: connections wait to be accepted, and their peers may close them first.' % where.listener,
          ),
          alert(
            'TcpStateListenOverflows',
            c.listenOverflows,
            |||
              increase(tcpstate_listen_overflows_total[%(window)s]) >= %(minIncrease)s
            ||| % c.listenOverflows,
            'Accept queues keep overflowing.',
            'Accept queues overflowed {{ $value | humanize }} times in the last %s on instance {{ $labels.instance }}{{ with $labels.pod }}, pod {{ $labels.namespace }}/{{ . }}{{ end }}{{ with $labels.netns }}, netns {{ . }}{{ end }}: a listener there cannot accept as fast as connections arrive, and its peers give up (the dashboard\'s accept queue panels name the port).' % c.listenOverflows.window,
          ),
        ],
      },
      {
        name: 'tcpstate-exporter',
        rules: [
          alert(
            'TcpStateExporterDown',
            c.exporterDown,
            |||
              up{%(jobSelector)s} == 0
            ||| % c,
            'Prometheus cannot scrape tcpstate-exporter.',
            'tcpstate-exporter on {{ $labels.instance }} has not answered scrapes for %s: CLOSE_WAIT alerts for that machine cannot fire.' % c.exporterDown['for'],
          ),
          alert(
            'TcpStateSampleErrors',
            c.sampleErrors,
            |||
              increase(tcpstate_sample_errors_total[%(window)s]) > 0
            ||| % c.sampleErrors,
            'tcpstate-exporter keeps failing to sample the TCP table.',
            'tcpstate-exporter on {{ $labels.instance }}{{ with $labels.netns }} (netns {{ . }}){{ end }} failed {{ $value | humanize }} samples in the last %s, reason {{ $labels.reason }}: it serves its last good sample.' % c.sampleErrors.window,
          ),
          alert(
            'TcpStateDataStale',
            c.stale,
            |||
              time() - tcpstate_last_sample_timestamp_seconds > %(ageSeconds)s
            ||| % c.stale,
            'tcpstate-exporter serves old data.',
            'The last good sample of tcpstate-exporter on {{ $labels.instance }}{{ with $labels.netns }} (netns {{ . }}){{ end }} is {{ $value | humanizeDuration }} old: its figures no longer describe the machine.',
          ),
          alert(
            'TcpStateGroupsFolded',
            c.groupsFolded,
            |||
              tcpstate_groups_folded > 0
            |||,
            'Some ports/processes are folded into port="other", process="other".',
            'tcpstate-exporter on {{ $labels.instance }}{{ with $labels.netns }} (netns {{ . }}){{ end }} folded {{ $value | humanize }} groups into port="other", process="other" because max_groups is reached: raise max_groups or expect CLOSE_WAIT there to show only in that bucket.',
          ),
        ],
      },
    ],
  },
}
