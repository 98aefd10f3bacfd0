#!/bin/sh
# The tuning photographs: fourteen photos from Debian's lomiri-wallpapers-16.04 and -20.04 packages
# (CC-BY-4.0, CC-BY-SA-4.0 and CC0-1.0; OUT_DIR/copyright names each author), downscaled to a short
# side of 1024 pixels. Neither network was trained on them, so the reconstruction's rules are chosen
# on them (the training images flatter the restorer, which has learnt them). Not redistributed here.
#
#   sh scripts/tuning_photos.sh OUT_DIR        (needs apt-get download and dpkg-deb; PYTHON=... to pick)
set -eu
out=${1:?usage: sh scripts/tuning_photos.sh OUT_DIR}
. "$(dirname "$0")/debian_photos.sh"
unpack lomiri-wallpapers-16.04 lomiri-wallpapers-20.04
mkdir -p "$tmp/src" "$out"
for f in Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Picture_0B_by_freespace Picture_1A_by_freespace \
         Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi free_by_Peter_Nerlich friends_by_Aitzol_Berasategi \
         greentock_by_Peter_Nerlich life_by_Aitzol_Berasategi picosdeeuropa_by_Aitzol_Berasategi \
         seeding_by_Clements_Engelhardt sunset_by_Aitzol_Berasategi Kleiber_by_Lukas_Baubkus; do
    cp "$tmp/x/usr/share/backgrounds/$f.jpg" "$tmp/src/"
done
cp "$tmp/x/usr/share/doc/lomiri-wallpapers-16.04/copyright" "$out/copyright"
"$py" "$here/scripts/prepare_photos.py" "$tmp/src" "$out" --sides 1024
