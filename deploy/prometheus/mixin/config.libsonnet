// Every threshold of the tcpstate-exporter alerts lives here, and only here.
// The rules file, the dashboard's threshold lines and the runbook's threshold table
// are generated from it by deploy/prometheus/mixin/build.sh; edit this file, run the
// build, commit both. tests/monitoring/check.sh fails when the outputs are stale.
//
// A "window" is a PromQL range; a "for" is how long the condition must hold before the
// alert fires (Prometheus duration syntax).
{
  _config+:: {
    // Selects the exporter's scrape job, for the `up` series. The tcpstate_* series are
    // unambiguous by name and are matched on every job.
    jobSelector: 'job="tcpstate-exporter"',

    // Each alert's runbook_url is this plus "#" and the alert name in lower case
    // (the anchor GitHub gives the runbook's heading of that name).
    runbookURLBase: 'https://github.com/tcpstate-exporter/tcpstate-exporter/blob/main/docs/runbook.md',

    // Grafana dashboard identity.
    dashboardUID: 'tcpstate-exporter',
    dashboardTags: ['tcpstate-exporter', 'tcp'],

    // TcpStateCloseWaitGrowing: a port/process whose CLOSE_WAIT count rose by at least
    // minIncrease over `window`, still rising (positive slope), without pause for `for`.
    // `window` shorter than `for` is what tells sustained growth from one step: a single
    // jump satisfies the condition for at most `window`, never for `for`.
    closeWaitGrowth: { minIncrease: 10, window: '10m', 'for': '15m', severity: 'warning' },

    // TcpStateCloseWaitStuck: the oldest CLOSE_WAIT connection of a group is older than
    // ageSeconds. A healthy program closes within milliseconds of the peer's FIN;
    // 15 minutes means it is not going to (cause 1: never closed).
    closeWaitStuck: { ageSeconds: 900, 'for': '5m', severity: 'warning' },

    // TcpStateCloseWaitClosedLate: the `quantile` of the time CLOSE_WAIT connections
    // spent before the program closed them exceeds `seconds`, over at least minCloses
    // closes in `window` (cause 2: closed, but too late for the peer).
    closeWaitClosedLate: { quantile: 0.9, seconds: 60, minCloses: 5, window: '15m', 'for': '10m', severity: 'warning' },

    // TcpStateAcceptQueueNearLimit: a listener's accept queue holds more than `ratio` of
    // its backlog (cause 3: the program does not accept fast enough).
    acceptQueue: { ratio: 0.8, 'for': '5m', severity: 'warning' },

    // TcpStateCloseWaitEofIgnored: a group holds at least minConnections CLOSE_WAIT
    // connections older than the exporter's close_wait.stuck_after (default 1m) whose
    // program read the EOF (Recv-Q 0) and did not close, without pause for `for`. Young
    // ones do not count: a busy server reads the EOF, finishes writing and closes a moment
    // later, so some are always caught in between. Cause 1 in its purest form.
    closeWaitEofIgnored: { minConnections: 1, 'for': '10m', severity: 'warning' },

    // TcpStateCloseWaitAcceptBacklog: a group holds at least minConnections CLOSE_WAIT
    // connections still in an accept queue, half or more of its CLOSE_WAIT (the rule of
    // snapshot's "accept backlog" verdict), without pause for `for`: its peers keep giving
    // up before the program accepts (cause 3). TcpStateCloseWaitStuck skips these groups.
    closeWaitAcceptBacklog: { minConnections: 1, 'for': '10m', severity: 'warning' },

    // TcpStateListenOverflows: a namespace's accept queues overflowed (TcpExt
    // ListenOverflows) at least minIncrease times in `window`, without pause for `for`.
    // A few overflows in a burst are retried by the clients unnoticed; sustained ones mean
    // a listener the program cannot drain (cause 3). `window` shorter than `for`: one
    // burst stays in the window for `window` only and never fires.
    listenOverflows: { minIncrease: 10, window: '5m', 'for': '10m', severity: 'warning' },

    // TcpStateFdExhaustionPredicted: a program holding growing CLOSE_WAIT (its count rose
    // over `window`) whose open descriptors, extrapolated linearly over `window`, reach
    // its soft RLIMIT_NOFILE within horizonSeconds (4h: time to find the leak before the
    // restart it will need), without pause for `for`. Every leaked socket is a descriptor;
    // at the limit accept() fails with EMFILE and the program stops serving.
    fdExhaustion: { window: '1h', horizonSeconds: 14400, 'for': '15m', severity: 'critical' },

    // The fleet view (recording rules, the dashboard's "Fleet" row): the `topk` worst
    // groups of the whole fleet per verdict signal, ranked once per rule evaluation.
    fleet: { topk: 20 },

    // The dashboard's "closes after N s" panel subtracts the duration histogram's bucket
    // le=closeWaitClosedLate.seconds: keep that threshold one of the exporter's
    // close_wait.duration_buckets (default 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600).

    // TcpStateExporterDown: Prometheus cannot scrape the exporter.
    exporterDown: { 'for': '5m', severity: 'warning' },

    // TcpStateSampleErrors: sampling the kernel's table keeps failing (the exporter then
    // serves its last good sample, which grows old). `window` shorter than `for`: one
    // failed sample stays in the window for `window` only and never fires.
    sampleErrors: { window: '10m', 'for': '15m', severity: 'warning' },

    // TcpStateDataStale: the last good sample is older than ageSeconds (8 default sample
    // intervals): the figures served no longer describe the machine.
    stale: { ageSeconds: 120, 'for': '5m', severity: 'warning' },

    // TcpStateGroupsFolded: the per-metric group limit (max_groups) is reached and some
    // ports/processes are folded into port="other", process="other".
    groupsFolded: { 'for': '30m', severity: 'info' },
  },
}
