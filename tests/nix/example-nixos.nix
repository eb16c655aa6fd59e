# An example NixOS host whose runner sends jobs to an Orchard fleet of three Macs. Used by the
# flake's nixos-module check and shown in docs/nixos.md.
{
  boot.loader.grub.enable = false;
  fileSystems."/".device = "/dev/disk/by-label/nixos";
  system.stateVersion = "26.05";

  services.gitlab-runner-tart = {
    enable = true;
    fleet.workers = 3; # concurrent = 3 x 2 = 6
    runners.fleet = {
      url = "https://gitlab.example.com";
      authenticationTokenFile = "/var/lib/gitlab-runner-tart/secrets/gitlab.token";
      defaultImage = "ghcr.io/cirruslabs/macos-sequoia-base:latest";
      sshUser = "admin";
      sshPasswordFile = "/var/lib/gitlab-runner-tart/secrets/guest-password";
      # On Orchard a job may run only images declared public (workers pull with their own logins).
      settings.public_images = [ "ghcr\\.io/cirruslabs/macos-.*" ];
      orchard = {
        url = "https://orchard.example.com:6120";
        serviceAccount = "gitlab-runner";
        tokenFile = "/var/lib/gitlab-runner-tart/secrets/orchard.token";
        caFile = "/etc/ssl/orchard-ca.pem";
        labels.xcode = "16";
      };
    };
  };
}
