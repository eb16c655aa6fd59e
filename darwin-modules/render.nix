# Pure rendering helpers of the gitlab-runner-tart module.
#
# Uses builtins only (no nixpkgs lib, no pkgs), so that CI can evaluate it with nothing but
# `nix-instantiate`. Every function takes values shaped like the module's options
# (`services.gitlab-runner-tart`, camelCase) and returns plain data or shell text; the module
# (`./default.nix`) declares the options and wires these results into nix-darwin.
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    elem
    filter
    foldl'
    hasAttr
    head
    isAttrs
    isPath
    length
    map
    match
    removeAttrs
    replaceStrings
    sort
    storeDir
    substring
    stringLength
    toString
    ;

  # Removes the attributes whose value is null or an empty list.
  compact =
    attrs:
    removeAttrs attrs (filter (n: attrs.${n} == null || attrs.${n} == [ ]) (attrNames attrs));

  # Deep merge: attrsets merge key by key, anything else in `b` wins.
  recursiveMerge =
    a: b:
    foldl' (
      acc: n:
      acc
      // {
        ${n} =
          if hasAttr n acc && isAttrs acc.${n} && isAttrs b.${n} then
            recursiveMerge acc.${n} b.${n}
          else
            b.${n};
      }
    ) a (attrNames b);

  # A path literal or a string, as a string, without copying a path literal to the store.
  pathString = p: if p == null then null else if isPath p then toString p else p;

  isStorePath =
    p:
    let
      s = pathString p;
    in
    s != null && substring 0 (stringLength storeDir + 1) s == storeDir + "/";

  escapeShellArg = s: "'" + replaceStrings [ "'" ] [ "'\\''" ] (toString s) + "'";

  # The host side of a `host:guest[:ro]` volume, or null when the string is malformed.
  volumeHostPath =
    v:
    let
      m = match "(/[^:]*):(/[^:]*)(:ro)?" v;
    in
    if m == null then null else head m;

  runnerList =
    cfg: map (n: cfg.runners.${n} // { _attr = n; }) (sort (a: b: a < b) (attrNames cfg.runners));

  runnerName = r: if (r.name or null) != null then r.name else r._attr;
in
rec {
  inherit
    compact
    recursiveMerge
    pathString
    isStorePath
    escapeShellArg
    volumeHostPath
    ;

  # The driver's YAML config for one runner (JSON is valid YAML), before `settings` is merged
  # in last. Keys are the driver's snake_case names; unset options are left out so that the
  # driver's own defaults apply.
  # `softnet` (null: the driver's default) says whether jobs' VMs use Softnet; the module
  # sets it to whether it provisions Softnet. An Orchard runner (`backend = "orchard"`)
  # gets the `orchard` section and none of this host's Tart, Softnet or directories.
  driverConfig =
    {
      concurrency,
      tartExecutable ? null,
      runner,
      softnet ? null,
    }:
    let
      orchard = isOrchard runner;
    in
    recursiveMerge (compact {
      tart_executable = if orchard then null else tartExecutable;
      softnet = if orchard then null else softnet;
      inherit concurrency;
      backend = if orchard then "orchard" else null;
      # Only with a pool: a driver without the warm pool refuses these keys.
      warm_pool = if warmPool runner > 0 then warmPool runner else null;
      warm_images = if warmPool runner > 0 then runner.warm.images or [ ] else [ ];
      warm_expiry = if warmPool runner > 0 then runner.warm.expiry or null else null;
      orchard = if orchard then orchardSection runner.orchard else null;
      builds_dir = runner.buildsDir or null;
      cache_dir = runner.cacheDir or null;
      volumes = runner.volumes or [ ];
      allow_images = runner.allowImages or [ ];
      exclude_images = runner.excludeImages or [ ];
      default_image = runner.defaultImage or null;
      pull_policy = runner.pullPolicy or null;
      allowed_pull_policies = runner.allowedPullPolicies or [ ];
      ssh_username = runner.sshUser or null;
      ssh_password_file = pathString (runner.sshPasswordFile or null);
      ssh_key_file = pathString (runner.sshKeyFile or null);
      cpu = runner.cpu or null;
      memory = runner.memory or null;
      display = runner.display or null;
      timeout = runner.timeout or null;
      transport = runner.transport or null;
    }) (runner.settings or { });

  isOrchard = runner: (runner.backend or "tart") == "orchard";

  warmPool = runner: (runner.warm or { }).pool or 0;

  # The driver's `orchard:` section from a runner's `orchard` options.
  orchardSection =
    o:
    let
      nonEmpty = a: if a == { } then null else a;
    in
    compact {
      url = o.url or null;
      service_account = o.serviceAccount or null;
      token_file = pathString (o.tokenFile or null);
      ca_file = pathString (o.caFile or null);
      ca_fingerprint = o.caFingerprint or null;
      labels = nonEmpty (o.labels or { });
      resources = nonEmpty (o.resources or { });
      queue_timeout = o.queueTimeout or null;
      boot_timeout = o.bootTimeout or null;
      host_dirs = nonEmpty (o.hostDirs or { });
      name_prefix = o.namePrefix or null;
      max_vm_age = o.maxVmAge or null;
      allow_plain_http = o.allowPlainHttp or null;
    };

  # The spec that `gitlab-runner-tart-driver runner-config` turns into config.toml. It holds
  # token FILE PATHS only. `driverConfigFiles` maps each runner's attribute name to the
  # store path of its driver YAML.
  spec =
    {
      cfg,
      driver,
      driverConfigFiles,
    }:
    compact {
      concurrent = cfg.concurrency;
      check_interval = cfg.checkInterval or 3;
      shutdown_timeout = cfg.shutdownTimeout or null;
      log_level = cfg.logLevel or null;
      runners = map (
        r:
        compact {
          name = runnerName r;
          inherit (r) url;
          token_file = pathString r.authenticationTokenFile;
          limit = r.limit or null;
          executor = "custom";
          inherit driver;
          driver_config = driverConfigFiles.${r._attr};
          concurrency = cfg.concurrency;
          environment = r.environment or [ ];
        }
        // {
          extra = r.extraConfig or { };
        }
      ) (runnerList cfg);
      extra = cfg.extraConfig or { };
    };

  # Host directories to create at activation: { path; mode; own; } where `own` says whether
  # an existing directory is (re)chowned to the runner's user. Volume host paths are only
  # created when missing, never taken over.
  hostDirs =
    cfg:
    let
      owned = mode: path: {
        inherit path mode;
        own = true;
      };
      perRunner =
        r:
        map (owned "0750") (
          filter (p: p != null) [
            (pathString (r.buildsDir or null))
            (pathString (r.cacheDir or null))
          ]
        )
        ++ map (path: {
          inherit path;
          mode = "0750";
          own = false;
        }) (filter (p: p != null) (map volumeHostPath (r.volumes or [ ])));
      all = [
        (owned "0700" cfg.stateDir)
        (owned "0755" cfg.logDir)
      ]
      ++ builtins.concatMap perRunner (runnerList cfg);
      # Keep the first entry for each path.
      dedup = foldl' (
        acc: d: if builtins.any (x: x.path == d.path) acc then acc else acc ++ [ d ]
      ) [ ] all;
    in
    dedup;

  # Activation snippet (runs as root): creates the host directories and, with Softnet,
  # installs its setuid copy. nix-darwin shellchecks the whole `activate` script, so this
  # defines only what it uses. `cfg.home` is the user's home directory; `cfg.softnetSource`
  # is the softnet executable to install (`provisionSoftnet`), or null to remove an earlier
  # copy.
  activationScript =
    cfg:
    let
      dirs = hostDirs cfg;
      line =
        d:
        if d.own then
          "gitlab_runner_tart_dir ${d.mode} ${escapeShellArg d.path}"
        else
          "[ -e ${escapeShellArg d.path} ] || gitlab_runner_tart_dir ${d.mode} ${escapeShellArg d.path}";
      softnet = cfg.softnetSource or null;
    in
    ''
      # gitlab-runner-tart: host directories for ${cfg.user}
      echo "setting up gitlab-runner-tart directories..." >&2
      (
        owner=${escapeShellArg cfg.user}
        home=${escapeShellArg cfg.home}
        group=$(id -gn -- "$owner")
        # A user that nix-darwin created without `createHome` has no home directory
        # (`sysadminctl -addUser -home` does not create it), and cannot create one in
        # /Users itself: every directory below it would fail. macOS's createhomedir, as
        # nix-darwin uses it (modules/users), lays the home out from the user template
        # (Library and the rest, owned and protected as macOS expects); a bare directory
        # only when createhomedir is missing or leaves no home at $home.
        if [ ! -d "$home" ]; then
          echo "gitlab-runner-tart: creating $owner's home directory $home" >&2
          if command -v createhomedir >/dev/null 2>&1; then
            createhomedir -cu "$owner" >/dev/null \
              || echo "gitlab-runner-tart: createhomedir -cu $owner failed" >&2
          fi
          if [ ! -d "$home" ]; then
            echo "gitlab-runner-tart: creating $home as an empty directory instead" >&2
            install -d -m 0700 -o "$owner" -g "$group" "$home"
          fi
        fi
        gitlab_runner_tart_dir() {
          # Below the home directory, missing parents are created by (and for) the user.
          case "$2" in
            "$home"/*) sudo --user="$owner" -- mkdir -p -- "$2" ;;
            *) mkdir -p -- "$2" ;;
          esac
          chown -- "$owner:$group" "$2"
          chmod -- "$1" "$2"
        }
        ${concatStringsSep "\n  " (map line dirs)}
      )
    ''
    + (
      if softnet == null then
        ''
          rm -rf ${escapeShellArg softnetDir}
        ''
      else
        ''
          # Softnet runs as root: Tart uses a setuid-root softnet found on PATH (a store path
          # cannot be setuid, so a copy outside the store).
          install -d -m 0755 -o root -g wheel ${escapeShellArg softnetDir}
          install -m 4755 -o root -g wheel ${escapeShellArg softnet} ${escapeShellArg "${softnetDir}/softnet"}
        ''
    );

  # Where the setuid copy of softnet lives; first on the agents' PATH, installed or not.
  softnetDir = "/usr/local/libexec/gitlab-runner-tart";

  # Whether activation installs that copy: whenever a runner runs its VMs on this Mac's Tart,
  # whatever `softnet.enable` (the driver's default) says. The driver also runs a job's VM
  # with Softnet when the runner's `settings.softnet` or `softnet_allow`, or the job's
  # TART_EXECUTOR_SOFTNET_ENABLED or TART_EXECUTOR_SOFTNET_ALLOW ask for it (a job may add
  # isolation, never remove it), and Tart fails such a VM without softnet on PATH. The copy
  # does nothing unless Tart starts it for a VM that asks for Softnet, so installing it is
  # safer than guessing which runner or job will ask: a configuration that cannot, only
  # Orchard runners (their VMs run on the fleet), removes it.
  provisionSoftnet = runners: builtins.any (r: !isOrchard r) (builtins.attrValues runners);

  # Fills the warm pool of each driver config that has one (`configs`: name -> driver config
  # and its file), in the background: booting takes a while, and the agent that runs this
  # must return at once (launchd must not kill these: AbandonProcessGroup), so that a switch
  # never finds it busy.
  warmCommands =
    {
      driver,
      configs,
    }:
    concatStringsSep "" (
      map (
        n:
        if (configs.${n}.config.warm_pool or 0) > 0 then
          "${escapeShellArg driver} warm --config ${escapeShellArg configs.${n}.file} &\n"
        else
          ""
      ) (attrNames configs)
    );

  # The command that renders config.toml from a spec and the token files.
  renderCommand =
    {
      driver,
      specFile,
      configFile,
    }:
    "${escapeShellArg driver} runner-config --spec ${escapeShellArg specFile} --output ${escapeShellArg configFile}";

  # Body of the periodic log agent: a log over `maxBytes` is copied to <log>.1 (older copies
  # shift up to <log>.<keep>) and truncated in place, because launchd keeps the file open.
  logRotateScript =
    {
      logs,
      maxBytes,
      keep,
    }:
    ''
      set -eu
      for log in ${concatStringsSep " " (map escapeShellArg logs)}; do
        [ -f "$log" ] || continue
        size=$(wc -c <"$log")
        [ "$size" -gt ${toString maxBytes} ] || continue
        i=${toString keep}
        rm -f "$log.$i"
        while [ "$i" -gt 1 ]; do
          prev=$((i - 1))
          if [ -f "$log.$prev" ]; then mv -f "$log.$prev" "$log.$i"; fi
          i=$prev
        done
        cp -p "$log" "$log.1"
        : >"$log"
        echo "gitlab-runner-tart: rotated $log ($size bytes)" >&2
      done
    '';

  # Body of the periodic agent: the driver's orphan sweep, once per driver config.
  gcScript =
    {
      driver,
      configFiles,
      extraArgs ? [ ],
    }:
    ''
      status=0
      ${concatStringsSep "\n" (
        map (
          f:
          "${escapeShellArg driver} gc --config ${escapeShellArg f}${
            concatStringsSep "" (map (a: " " + escapeShellArg a) extraArgs)
          } || status=$?"
        ) configFiles
      )}
      exit "$status"
    '';

  # Paths (`a.b.c`) of the null values in a nested attrset or list: TOML has no null.
  nullPaths =
    prefix: v:
    if v == null then
      [ prefix ]
    else if isAttrs v then
      builtins.concatMap (n: nullPaths "${prefix}.${n}" v.${n}) (attrNames v)
    else if builtins.isList v then
      builtins.concatMap (i: nullPaths "${prefix}[${toString i}]" (builtins.elemAt v i)) (
        builtins.genList (i: i) (length v)
      )
    else
      [ ];

  # Free-form keys the module refuses, with why and what to use instead. runner-config
  # refuses some at start (the agent would crash-loop); the others would let `concurrent`
  # and the driver's `--concurrency` drift apart, or bypass the driver.
  refusedGlobalKeys = {
    concurrent = "it is set from concurrency";
    check_interval = "use checkInterval";
    runners = "declare runners under runners";
  };
  refusedRunnerKeys = {
    token = "the token is read from authenticationTokenFile";
    limit = "use the runner's limit option (at most concurrency)";
    executor = "this module's runners use the custom executor";
  };
  # In `[runners.custom]`: the stages must run the driver with `--concurrency = concurrent`.
  refusedCustomKeys = builtins.concatMap (
    stage: [
      "${stage}_exec"
      "${stage}_args"
    ]
  ) [
    "config"
    "prepare"
    "run"
    "cleanup"
  ];
  refusedSettings = {
    concurrency = "it is set from services.gitlab-runner-tart.concurrency";
    backend = "use the runner's backend option";
    warm_pool = "use the runner's warm.pool option";
    warm_images = "use the runner's warm.images option";
    warm_expiry = "use the runner's warm.expiry option";
    orchard = "use the runner's orchard options";
    state_dir = "the driver counts running VMs in its state directory, so every runner of the host must share the default one";
  };

  # Assertions: [{ assertion; message; }], in nix-darwin's shape.
  assertions =
    cfg:
    let
      rs = runnerList cfg;
      names = map runnerName rs;
      dupNames = filter (n: length (filter (m: m == n) names) > 1) names;
      badVolumes = filter (v: volumeHostPath v == null) (
        builtins.concatMap (r: r.volumes or [ ]) rs
      );
      overLimit = filter (r: (r.limit or null) != null && r.limit > cfg.concurrency) rs;
      prefix = "services.gitlab-runner-tart";
      refused =
        what: table: attrs:
        map (k: {
          assertion = false;
          message = "${what}.${k} is not allowed: ${table.${k}}.";
        }) (filter (k: hasAttr k attrs) (attrNames table));
      perRunner =
        r:
        let
          at = "${prefix}.runners.${r._attr}";
          extra = r.extraConfig or { };
          custom = if isAttrs (extra.custom or null) then extra.custom else { };
          nulls = nullPaths "${at}.extraConfig" extra;
          token = pathString r.authenticationTokenFile;
          o = r.orchard or { };
          orchardToken = pathString (o.tokenFile or null);
          hostDirsSet = filter (k: (r.${k} or null) != null && (r.${k} or null) != [ ]) [
            "buildsDir"
            "cacheDir"
            "volumes"
          ];
          orchardAssertions = [
            {
              assertion = all (k: (o.${k} or null) != null) [
                "url"
                "serviceAccount"
                "tokenFile"
              ];
              message = "${at}.orchard: an Orchard runner needs url, serviceAccount and tokenFile; set all three.";
            }
            {
              assertion = orchardToken == null || substring 0 1 orchardToken == "/";
              message = "${at}.orchard.tokenFile (${toString orchardToken}) is not an absolute path; give the quoted absolute path of the token file.";
            }
            {
              assertion = (o.caFile or null) == null || (o.caFingerprint or null) == null;
              message = "${at}.orchard: set caFile or caFingerprint, not both.";
            }
            {
              assertion =
                match "https://.*" (toString (o.url or "https://")) != null
                || ((o.caFile or null) == null && (o.caFingerprint or null) == null);
              message = "${at}.orchard.url is plain http: a pinned certificate (caFile, caFingerprint) needs https.";
            }
            {
              assertion = hostDirsSet == [ ];
              message = "${at}: ${concatStringsSep ", " hostDirsSet} share this host's directories, but an Orchard runner's VMs run on the fleet's Macs; remove them (use orchard.hostDirs for read-only worker directories, and GitLab's distributed cache).";
            }
          ];
          notOrchard = {
            assertion = o == { } || all (v: v == null || v == { }) (builtins.attrValues o);
            message = "${at}.orchard is set but ${at}.backend is \"tart\"; set backend = \"orchard\" or remove the orchard options.";
          };
        in
        refused "${at}.extraConfig" refusedRunnerKeys extra
        ++ refused "${at}.settings" refusedSettings (r.settings or { })
        ++ map (k: {
          assertion = false;
          message = "${at}.extraConfig.custom.${k} is not allowed: every stage runs the driver, and prepare passes --concurrency equal to `concurrent`; set the driver's options with the runner's typed options or settings.";
        }) (filter (k: hasAttr k custom) refusedCustomKeys)
        ++ [
          {
            assertion = nulls == [ ];
            message = "${concatStringsSep ", " nulls}: null cannot be written to config.toml; remove the key.";
          }
          {
            assertion = match "[[:space:]]*" (runnerName r) == null;
            message = "${at}.name is empty; give the runner a name.";
          }
          {
            assertion = substring 0 1 token == "/";
            message = "${at}.authenticationTokenFile (${token}) is not an absolute path; give the quoted absolute path of the token file.";
          }
        ]
        ++ (if isOrchard r then orchardAssertions else [ notOrchard ])
        ++ [
          {
            assertion = warmPool r == 0 || !(isOrchard r);
            message = "${at}.warm.pool is set, but a warm pool keeps VMs booted on this Mac and an Orchard runner's VMs run on the fleet; set it to 0.";
          }
          {
            assertion =
              warmPool r == 0
              || (r.warm.images or [ ]) != [ ]
              || (r.defaultImage or null) != null
              || (r.settings or { }) ? default_image;
            message = "${at}.warm.pool is ${toString (warmPool r)} but names no image to boot; set ${at}.warm.images or ${at}.defaultImage.";
          }
        ];
      globalNulls = nullPaths "${prefix}.extraConfig" (cfg.extraConfig or { });
    in
    refused "${prefix}.extraConfig" refusedGlobalKeys (cfg.extraConfig or { })
    ++ builtins.concatMap perRunner rs
    ++ [
      {
        assertion = globalNulls == [ ];
        message = "${concatStringsSep ", " globalNulls}: null cannot be written to config.toml; remove the key.";
      }
      {
        assertion =
          cfg.concurrency <= 2 || (cfg.linuxGuestsOnly or false) || all isOrchard rs;
        message = "${prefix}.concurrency is ${toString cfg.concurrency}, but Apple's virtualization framework runs at most 2 macOS VMs per host; lower it to 2, or set ${prefix}.linuxGuestsOnly = true if every job uses a Linux image.";
      }
      {
        assertion = rs != [ ];
        message = "${prefix} is enabled but ${prefix}.runners is empty; declare at least one runner.";
      }
      {
        assertion = cfg.user != null;
        message = "${prefix}.user is not set; set system.primaryUser (or ${prefix}.user) to the user who is logged in to the GUI, since Tart needs a GUI session.";
      }
      {
        assertion = cfg.user == null || cfg.user == (cfg.primaryUser or cfg.user);
        message = "${prefix}.user (${toString cfg.user}) differs from system.primaryUser (${toString (cfg.primaryUser or null)}); nix-darwin installs user launch agents only for system.primaryUser, so make them equal.";
      }
      # nix-darwin creates a user of `users.knownUsers` whose `home` is null with the home
      # directory /var/empty (read-only): Tart, which takes its home from the user database,
      # could keep nothing there, while the agents would use /Users/<user>. `knownUsers` and
      # `declaredHome` (the user's `users.users.<u>.home`, or null) come from the module.
      {
        assertion = !(elem cfg.user (cfg.knownUsers or [ ])) || (cfg.declaredHome or null) != null;
        message =
          let
            u = toString cfg.user;
          in
          "users.users.${u}.home is not set, but ${u} is in users.knownUsers, so nix-darwin creates ${u} with the home directory /var/empty, where Tart cannot keep its VMs; set users.users.${u}.home = \"/Users/${u}\"; users.users.${u}.createHome = true; (a ${u} created earlier with /var/empty also needs: sudo dscl . -create /Users/${u} NFSHomeDirectory /Users/${u})";
      }
      {
        assertion = dupNames == [ ];
        message = "${prefix}.runners: runner names must be unique; duplicated: ${concatStringsSep ", " dupNames}.";
      }
      {
        assertion = badVolumes == [ ];
        message = "${prefix}.runners.*.volumes: ${concatStringsSep ", " badVolumes} not in the form /host/path:/guest/path[:ro] with absolute paths.";
      }
      {
        assertion = overLimit == [ ];
        message = "${prefix}.runners: limit of ${concatStringsSep ", " (map runnerName overLimit)} exceeds concurrency (${toString cfg.concurrency}); the extra jobs could never run.";
      }
    ];

  # Warnings: a list of strings.
  warnings =
    cfg:
    builtins.concatMap (
      r:
      let
        n = r._attr;
      in
      (
        if isStorePath r.authenticationTokenFile then
          [
            "services.gitlab-runner-tart.runners.${n}.authenticationTokenFile (${pathString r.authenticationTokenFile}) is in the Nix store, which every local user can read; keep the token in a file outside the store (a quoted absolute path), mode 0600, owned by ${toString cfg.user}."
          ]
        else
          [ ]
      )
      ++ (
        if warmPool r > 0 && (r.cacheDir or null) != null then
          [
            "services.gitlab-runner-tart.runners.${n}.warm.pool is ${toString (warmPool r)}, but the driver uses no warm VM while the runner has a cacheDir (a warm VM cannot share a project's cache before it knows the project): the pool would only take memory. Remove cacheDir (use GitLab's distributed cache) or the pool."
          ]
        else
          [ ]
      )
      ++ (
        if isStorePath ((r.orchard or { }).tokenFile or null) then
          [
            "services.gitlab-runner-tart.runners.${n}.orchard.tokenFile (${pathString r.orchard.tokenFile}) is in the Nix store, which every local user can read; keep the service account's token in a file outside the store (a quoted absolute path), mode 0600, owned by ${toString cfg.user}."
          ]
        else
          [ ]
      )
      ++ (
        if isStorePath (r.sshPasswordFile or null) then
          [
            "services.gitlab-runner-tart.runners.${n}.sshPasswordFile (${pathString r.sshPasswordFile}) is in the Nix store, which every local user can read; keep it outside the store (a quoted absolute path)."
          ]
        else
          [ ]
      )
    ) (runnerList cfg);

  inherit runnerList runnerName;
}
