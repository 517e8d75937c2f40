// Recording rules: the fleet view. On a Prometheus scraping 1,000 nodes a dashboard that
// ranks every group of every instance would scan all their series on each refresh, for
// each viewer; these rules rank once per evaluation and keep only the top `topk` groups
// per verdict signal (plus one CLOSE_WAIT total per instance), which the dashboard's
// "Fleet" row reads. Windows and quantiles are the alerts' own (config.libsonnet).
{
  prometheusRules+:: {
    local c = $._config,
    local f = c.fleet,
    local record(name, expr) = { record: name, expr: expr },
    groups+: [
      {
        name: 'tcpstate-fleet',
        rules: [
          // Never closed: CLOSE_WAIT older than the exporter's close_wait.stuck_after.
          record('tcpstate_fleet:close_wait_stuck_connections:topk',
                 'topk(%d, tcpstate_close_wait_stuck_connections > 0)' % f.topk),
          record('tcpstate_fleet:close_wait_oldest_seconds:topk',
                 'topk(%d, tcpstate_close_wait_oldest_seconds)' % f.topk),
          // Accept backlog: CLOSE_WAIT never accepted.
          record('tcpstate_fleet:close_wait_unaccepted:topk',
                 'topk(%d, tcpstate_close_wait_unaccepted > 0)' % f.topk),
          // Closed late: the alert's quantile of the time spent before the close.
          record('tcpstate_fleet:close_wait_closed_seconds:topk',
                 'topk(%d, histogram_quantile(%g, rate(tcpstate_close_wait_duration_seconds_bucket[%s])) > 0)'
                 % [f.topk, c.closeWaitClosedLate.quantile, c.closeWaitClosedLate.window]),
          // Growth over the growth alert's window.
          record('tcpstate_fleet:close_wait_growth:topk',
                 'topk(%d, delta(tcpstate_connections{state="close_wait"}[%s]) > 0)'
                 % [f.topk, c.closeWaitGrowth.window]),
          // The fd cliff: share of the soft limit open now.
          record('tcpstate_fleet:process_fd_usage_ratio:topk',
                 'topk(%d, tcpstate_process_open_fds / (tcpstate_process_max_fds > 0))' % f.topk),
          record('tcpstate_instance:close_wait_connections:sum',
                 'sum by (job, instance) (tcpstate_sockets{state="close_wait"})'),
        ],
      },
    ],
  },
}
