# The runner's launch agent and how a switch hands it a new version.
#
# nix-darwin reloads a user agent whose plist text changed with `launchctl unload || true;
# cp; launchctl load -w` under `set -e` (modules/system/launchd.nix). While gitlab-runner
# drains its jobs, the unload returns early and the load fails: the switch aborts or the
# agent stays unloaded, and the next switch (same plist) does not fix it. So the runner's
# plist is the same text for every configuration (`plist`): it runs the fixed path
# `/etc/gitlab-runner-tart/agent`, which nix-darwin points at the current generation's
# script. A switch that changes that script signals the running one to drain (no new jobs,
# running jobs finish, bounded by the drain time); launchd's KeepAlive then starts the new
# script. The switch itself returns at once.
#
# Builtins only (no nixpkgs lib), like ./render.nix, so that CI evaluates it with Nix alone.
let
  inherit (import ./render.nix) escapeShellArg renderCommand;
  inherit (builtins) concatStringsSep dirOf hashString toString;
in
rec {
  label = "org.nixos.gitlab-runner-tart";

  # Where nix-darwin links the current generation's script (environment.etc).
  link = "/etc/gitlab-runner-tart/agent";

  # Longest drain and gitlab-runner shutdown the options allow (`drainTimeout`,
  # `shutdownTimeout`). ExitTimeOut is how long launchd waits between its SIGTERM and its
  # SIGKILL when it stops the agent itself (an unload: nix-darwin does one only when the plist
  # changes). The script ends within drainTimeout + shutdown_timeout of a SIGTERM (it passes
  # SIGTERM on after the drain, and gitlab-runner's shutdown_timeout bounds the rest), so the
  # SIGKILL is a backstop that must never come first. It is the options' maximum (25 h), not
  # the configured values, so that changing either leaves the plist as it is. A switch's
  # restart is a signal (`launchctl kill`), not a stop, so it does not apply there.
  maxDrainTimeout = 86400;
  maxShutdownTimeout = 3600;
  exitTimeOut = maxDrainTimeout + maxShutdownTimeout + 60;

  # The runner agent's serviceConfig: nothing in it depends on the configuration.
  serviceConfig = {
    LimitLoadToSessionType = "Aqua";
    KeepAlive = true;
    RunAtLoad = true;
    ProcessType = "Interactive";
    ThrottleInterval = 30;
    ExitTimeOut = exitTimeOut;
  };

  # The running script records its generation here, and activation compares it with the new
  # one. The path depends on no option: a switch that moves stateDir (or logDir, or HOME)
  # changes the script, so activation must find the record the running script wrote under the
  # old settings. Activation creates the directory for the user (the agent cannot, in /var/db).
  # It must outlive a restart of the Mac (so not /var/run): the agent starts at login, before
  # any switch could create it again.
  generationDir = "/var/db/gitlab-runner-tart";
  generationFile = "${generationDir}/agent-generation";

  # Where the agents of the module's earlier layout recorded their generation. A host that
  # upgrades from it has such an agent running: activation reads this record once, when
  # `generationFile` is missing, and removes it, so that the old agent drains and restarts
  # with the new script rather than run until the next logout.
  legacyGenerationFile = stateDir: "${stateDir}/.tart-agent-generation";

  # Shell command printing `user`'s home directory in the user database, as nix-darwin reads
  # it (modules/users/default.nix): `dscl . -read` prints `NFSHomeDirectory: /Users/ci`, or,
  # for a value with a space, the value on the next line after a space. Prints nothing for
  # an unknown user.
  readHome =
    user:
    "dscl . -read ${escapeShellArg "/Users/${user}"} NFSHomeDirectory 2>/dev/null"
    + " | sed -e '1s/^NFSHomeDirectory://' -e 's/^ //' | tr -d '\\n'";

  # The start of the scripts of the agents that run Tart or the driver: they refuse to run
  # unless they run as `user` and the HOME the module exports is the user's home in the user
  # database. Tart finds its home (VMs, image cache, registry logins in ~/.docker/config.json)
  # through `TART_HOME` when set, else Foundation's home for the current user, which is
  # `CFFIXED_USER_HOME` or else the user database's entry, never `$HOME`, and so does the
  # driver (`host::tart_home::home`). A user that nix-darwin created without `home` has
  # /var/empty there (read-only): every `tart` call would fail, job after job, while the
  # runner's own files went to the HOME the module assumed. Exporting `TART_HOME` or
  # `CFFIXED_USER_HOME` instead would move only Tart's files (or what goes through
  # Foundation): registry logins stay in the database home's ~/.docker/config.json, launchd
  # installs the agents under the database's home, OpenSSH and `sudo` look it up there, and
  # the login keychain macOS unlocks is the one under it, so the host would run on two homes
  # at once. Refusing, with the fix in the log, is the safer of the two. Another user running
  # the script (a plist left under the home of a former `system.primaryUser`) would use its
  # own Tart home and files it cannot write: refused too. Empty when `user` is null (NixOS:
  # systemd sets HOME from the same database). `refusal` says what stops; `asUser` is false
  # for the switch's check, which runs as root.
  homeCheck =
    {
      user ? null,
      home,
      refusal ? "not running",
      asUser ? true,
    }:
    if user == null then
      ""
    else
      ''
        home_user=${escapeShellArg user}
        home_want=${escapeShellArg home}
      ''
      + (
        if asUser then
          ''
            if [ "$(id -un)" != "$home_user" ]; then
              echo "gitlab-runner-tart: this agent runs as $(id -un), but the module's runner user is $home_user (did system.primaryUser or services.gitlab-runner-tart.user change?); ${refusal}: remove $(id -un)'s copy of this agent (launchctl bootout gui/$(id -u)/${label}, or the plist under ~$(id -un)/Library/LaunchAgents) and log in as $home_user" >&2
              exit 1
            fi
          ''
        else
          ""
      )
      + ''
        # A dscl that fails (under `set -e` and `pipefail` at activation) must reach the
        # message below, not end the script silently.
        home_db=$(${readHome user}) || home_db=
        if [ -z "$home_db" ]; then
          echo "gitlab-runner-tart: cannot read $home_user's home directory from the user database (dscl . -read /Users/$home_user NFSHomeDirectory), so Tart's home is unknown; ${refusal}" >&2
          exit 1
        elif [ "$home_db" != "$home_want" ]; then
          echo "gitlab-runner-tart: $home_user's home directory in the user database is $home_db (where Tart keeps its VMs), but this configuration uses $home_want; ${refusal}: give $home_user the home $home_want (sudo dscl . -create /Users/$home_user NFSHomeDirectory $home_want, then log in again) or set users.users.$home_user.home = \"$home_db\", and switch again" >&2
          exit 1
        fi
      '';

  # nix-darwin's `system.checks` (first in activation, and at every boot): an existing user
  # whose home in the user database differs from the one the module uses, or cannot be read,
  # stops the switch before activation creates directories nothing would use. darwin-rebuild
  # has set the system profile by then, so the next boot stops here too until the home is
  # fixed or the admin rolls back (docs/nix-darwin.md). A user that does not exist yet
  # is left to nix-darwin, which creates a user of `users.knownUsers` later in this
  # activation with its declared `home` (an assertion requires one, ./render.nix).
  switchCheck =
    { user, home }:
    ''
      # gitlab-runner-tart: the runner user's home directory
      if id -u -- ${escapeShellArg user} >/dev/null 2>&1; then
      ${indent (
        homeCheck {
          inherit user home;
          refusal = "stopping the switch";
          asUser = false;
        }
      )}fi
    '';

  # Indents each non-empty line of `text` by two spaces.
  indent =
    text:
    concatStringsSep "\n" (
      map (l: if l == "" then l else "  " + l) (
        builtins.filter builtins.isString (builtins.split "\n" text)
      )
    );

  # The script's body. Everything the agent needs (PATH, HOME, log file) is set here rather
  # than in the plist. With `logFile = null` (systemd) the output stays where it was.
  # launchd stops an agent with SIGTERM, which gitlab-runner takes as
  # "abort every job"; the script turns it into SIGQUIT ("take no new jobs, let the running
  # ones finish") and passes SIGTERM on only after `drainTimeout` seconds; gitlab-runner's
  # own `shutdown_timeout` then bounds the rest.
  body =
    {
      shell,
      driver,
      gitlabRunner,
      specFile,
      configFile,
      stateDir,
      logFile,
      home,
      path,
      drainTimeout,
      # Where to record the generation (`generationFile`), or null (systemd: no activation
      # reads it).
      generationFile ? null,
      # The user, whose home in the user database must be `home` (`homeCheck`), or null.
      user ? null,
    }:
    let
      # Directories, and the log file unless systemd keeps the output.
      setup =
        if logFile == null then
          "mkdir -p ${escapeShellArg stateDir}\n"
        else
          ''
            mkdir -p ${escapeShellArg stateDir} "$(dirname ${escapeShellArg logFile})"
            exec >>${escapeShellArg logFile} 2>&1
          '';
      # A record is removed when its agent exits, so that a record names a running agent
      # (or one that was killed): activation leaves an agent without one alone, as its next
      # start runs the current script.
      record =
        if generationFile == null then
          ""
        else
          let
            file = escapeShellArg generationFile;
          in
          ''
            printf '%s\n' "$generation" >${file} \
              || echo "gitlab-runner-tart: cannot record this agent's generation in ${file}; a switch will not restart it with a new version (darwin-rebuild switch creates its directory)" >&2
            # shellcheck disable=SC2317,SC2329 # run by the trap below
            forget_generation() {
              if [ "$(cat ${file} 2>/dev/null)" = "$generation" ]; then rm -f ${file}; fi
            }
            trap forget_generation EXIT
          '';
    in
    ''
      #!${shell}
      set -eu
      umask 077
      export PATH=${escapeShellArg (concatStringsSep ":" path)}
      export HOME=${escapeShellArg home}
      ${setup}${homeCheck { inherit user home; }}${record}${
        renderCommand { inherit driver specFile configFile; }
      }
      cd ${escapeShellArg stateDir}
      # A script's background command starts with SIGQUIT ignored; gitlab-runner needs it.
      (
        trap - QUIT INT
        exec ${escapeShellArg gitlabRunner} run --config ${escapeShellArg configFile} --working-directory ${escapeShellArg stateDir}
      ) &
      runner=$!
      timer=
      # shellcheck disable=SC2317,SC2329 # run by the trap below
      drain() {
        trap "" TERM INT
        echo "gitlab-runner-tart: stopping: no new jobs; running jobs have ${toString drainTimeout} s to finish" >&2
        kill -QUIT "$runner" 2>/dev/null || true
        # The timer. It would inherit the TERM ignored above and outlive the agent, and a
        # TERM that kills only the timer leaves its `sleep` running: its handler ends (and
        # reaps) both. Until the `sleep` starts, `$!` is still gitlab-runner's pid (a trap
        # runs between commands, and `&` sets `$!` before the next one).
        (
          trap '[ "$!" = "$runner" ] || { kill "$!" 2>/dev/null; wait "$!" || true; }; exit 0' TERM
          sleep ${toString drainTimeout} &
          wait "$!" || exit 0
          echo "gitlab-runner-tart: jobs still running after ${toString drainTimeout} s; aborting them" >&2
          kill -TERM "$runner" 2>/dev/null || true
        ) &
        timer=$!
      }
      trap drain TERM INT
      # `wait` returns early when a trapped signal arrives: wait until gitlab-runner is gone.
      status=0
      while :; do
        wait "$runner" && status=0 || status=$?
        kill -0 "$runner" 2>/dev/null || break
      done
      # gitlab-runner is gone: the timer must not signal a process that reuses its pid.
      if [ -n "$timer" ]; then
        kill "$timer" 2>/dev/null || true
        wait "$timer" || true
      fi
      exit "$status"
    '';

  # A generation names the script's text: equal texts, equal generations.
  generation = args: hashString "sha256" (body args);

  # The script as installed: the body with its generation set after the `#!` line, when it
  # records it.
  script =
    args:
    let
      text = body args;
      lines = builtins.match "([^\n]*\n)(.*)" text;
    in
    if (args.generationFile or null) == null then
      text
    else
      builtins.elemAt lines 0 + "generation=${generation args}\n" + builtins.elemAt lines 1;

  # A periodic agent's script (installed at `/etc/gitlab-runner-tart/<name>` like the
  # runner's, so that its plist does not change either): the environment, then `body`.
  periodicScript =
    {
      shell,
      path,
      home,
      stateDir,
      logFile ? null,
      user ? null,
      body,
    }:
    ''
      #!${shell}
      set -u
      export PATH=${escapeShellArg (concatStringsSep ":" path)}
      export HOME=${escapeShellArg home}
      cd ${escapeShellArg stateDir} || exit 1
    ''
    + (if logFile == null then "" else "exec >>${escapeShellArg logFile} 2>&1\n")
    + homeCheck { inherit user home; }
    + body;

  # Activation (runs as root, after every other step): hands a new script to the agent.
  # - no GUI session for the user: says so (the agent runs only there);
  # - the agent not loaded (an earlier reload failed, or it was never loaded): loads it, as
  #   nix-darwin would;
  # - the agent runs another generation: SIGTERM to its script, which drains gitlab-runner;
  #   KeepAlive starts the new script once the jobs are done. No recorded generation means
  #   an agent that is not running its script yet (just loaded, or waiting to be started
  #   again), which runs the new one when it starts.
  # `record` is where the running agent's generation is (a test sets another path);
  # `legacyRecord` (`legacyGenerationFile`) is read when it is missing, then removed.
  activation =
    {
      user,
      home,
      drainTimeout,
      generation,
      record ? generationFile,
      legacyRecord ? null,
    }:
    ''
      # gitlab-runner-tart: the runner's agent takes up this generation
      (
        owner=${escapeShellArg user}
        uid=$(id -u -- "$owner")
        plist=${escapeShellArg "${home}/Library/LaunchAgents/${label}.plist"}
        running=$(cat ${escapeShellArg record} 2>/dev/null) || running=
        ${
          if legacyRecord == null then
            ""
          else
            concatStringsSep "\n  " [
              ''if [ -z "$running" ]; then''
              "  running=$(cat ${escapeShellArg legacyRecord} 2>/dev/null) || running="
              "fi"
              "rm -f -- ${escapeShellArg legacyRecord}"
              ""
            ]
        }if ! launchctl print "gui/$uid" >/dev/null 2>&1; then
          echo "gitlab-runner-tart: $owner has no GUI login session, and the runner runs only in one (Tart needs it); log in as $owner on the Mac's screen (or turn on automatic login for $owner); the runner starts then" >&2
        elif ! launchctl print "gui/$uid/${label}" >/dev/null 2>&1; then
          echo "gitlab-runner-tart: the runner's agent is not loaded; loading it" >&2
          launchctl asuser "$uid" sudo --user="$owner" -- launchctl load -w "$plist" \
            || echo "gitlab-runner-tart: loading $plist failed; run as $owner: launchctl load -w $plist" >&2
        elif [ -n "$running" ] && [ "$running" != ${escapeShellArg generation} ]; then
          echo "gitlab-runner-tart: the runner restarts with this generation once its running jobs finish (no new jobs meanwhile; at most ${toString drainTimeout} s)" >&2
          launchctl kill SIGTERM "gui/$uid/${label}" \
            || echo "gitlab-runner-tart: could not signal the runner; it runs the old version until it restarts" >&2
        fi
      )
    '';

  # Activation, before nix-darwin loads user agents:
  # - the directory of the generation record, the user's (the agent writes the record);
  # - without a loaded agent, no script of it runs, and a record left behind (an agent that
  #   was killed) is removed, so that the `activation` step after the load does not take the
  #   agent that starts now for an older one;
  # - without a GUI session, loading agents fails (LimitLoadToSessionType = Aqua); say why
  #   before that happens.
  prepare =
    {
      user,
      record ? generationFile,
      legacyRecord ? null,
    }:
    ''
      # gitlab-runner-tart: the runner's generation record
      (
        owner=${escapeShellArg user}
        uid=$(id -u -- "$owner")
        dir=${escapeShellArg (dirOf record)}
        mkdir -p -- "$dir"
        chown -- "$owner:$(id -gn -- "$owner")" "$dir"
        chmod -- 0755 "$dir"
        if ! launchctl print "gui/$uid/${label}" >/dev/null 2>&1; then
          rm -f -- ${escapeShellArg record}${
            if legacyRecord == null then "" else " ${escapeShellArg legacyRecord}"
          }
        fi
        if ! launchctl print "gui/$uid" >/dev/null 2>&1; then
          echo "gitlab-runner-tart: ${user} is not logged in to the GUI; its launch agents cannot be loaded now; log in as ${user} on the Mac's screen (or turn on automatic login) before switching; see docs/nix-darwin.md" >&2
        fi
      )
    '';
}
