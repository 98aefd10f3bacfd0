#!/bin/sh
# The training photographs: thirteen from Debian's mate-backgrounds package (the nature set and
# desktop/GreenTraditional.jpg) and twelve from plasma-workspace-wallpapers (the photographs among
# KDE's wallpapers; the others are drawings): the Debian packages' copyright files are copied to
# OUT_DIR/copyright.*, and OUT_DIR/sources.kde.txt lists each KDE photograph's author and licence
# (from its metadata.json: LGPL-3, one CC-BY-SA-4.0). Each photograph is written at short sides of 320
# and 640 pixels (scripts/prepare_photos.py). Not redistributed here.
# Neither set overlaps the tuning photographs (scripts/tuning_photos.sh) or the held-out images.
#
#   sh scripts/training_photos.sh OUT_DIR      (needs apt-get download and dpkg-deb; PYTHON=... to pick)
#   python -m injcert train ... --images OUT_DIR
set -eu
out=${1:?usage: sh scripts/training_photos.sh OUT_DIR}
. "$(dirname "$0")/debian_photos.sh"
unpack mate-backgrounds plasma-workspace-wallpapers
mkdir -p "$tmp/src" "$out"
cp "$tmp"/x/usr/share/backgrounds/mate/nature/* "$tmp/x/usr/share/backgrounds/mate/desktop/GreenTraditional.jpg" "$tmp/src/"
for n in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite OneStandsOut \
         Path Volna summer_1am; do
    # the largest rendition of each (one photograph, several screen sizes)
    f=$(ls -S "$tmp/x/usr/share/wallpapers/$n/contents/images/"* | head -n 1)
    cp "$f" "$tmp/src/kde_$n.${f##*.}"
    "$py" -c 'import json, sys
p = json.load(open(sys.argv[1])).get("KPlugin", {})
print(sys.argv[2], "by", ", ".join(a.get("Name", "?") for a in p.get("Authors", [])), "-", p.get("License", "?"))' \
        "$tmp/x/usr/share/wallpapers/$n/metadata.json" "kde_$n"
done > "$out/sources.kde.txt"
cp "$tmp/x/usr/share/doc/mate-backgrounds/copyright" "$out/copyright.mate-backgrounds"
zcat -f "$tmp/x/usr/share/doc/plasma-workspace-wallpapers/copyright" > "$out/copyright.plasma-workspace-wallpapers"
"$py" "$here/scripts/prepare_photos.py" "$tmp/src" "$out"
