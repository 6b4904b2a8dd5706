/* Progressive enhancement of the portal's pages: the map and pin, "use my location", address suggestions, photo
   preview and resizing. Every page works without this file; the form posts the same fields either way. */
(function () {
  "use strict";
  var MAX_EDGE = 1600;

  function tiles(map, el) {
    L.tileLayer(el.dataset.tileUrl, {maxZoom: 19, attribution: el.dataset.tileAttribution}).addTo(map);
  }

  function center(el) {
    var c = (el.dataset.center || "10.776,106.700").split(",");
    return [parseFloat(c[0]), parseFloat(c[1])];
  }

  function reportForm(form) {
    var lat = document.getElementById("lat"), lon = document.getElementById("long");
    var mapEl = document.getElementById("map");
    var marker = null, map = null;
    function place(latlng, zoom) {
      lat.value = latlng.lat.toFixed(6);
      lon.value = latlng.lng.toFixed(6);
      if (!map) { return; }
      if (marker) { marker.setLatLng(latlng); } else { marker = L.marker(latlng, {alt: form.dataset.mapLabel}).addTo(map); }
      if (zoom) { map.setView(latlng, zoom); }
    }
    if (mapEl && window.L && form.dataset.tileUrl) {
      mapEl.hidden = false;
      mapEl.setAttribute("role", "region");
      mapEl.setAttribute("aria-label", form.dataset.mapLabel);
      map = L.map(mapEl).setView(center(form), parseInt(form.dataset.zoom, 10) || 13);
      tiles(map, form);
      map.on("click", function (e) { place(e.latlng); });
      if (lat.value && lon.value && !isNaN(parseFloat(lat.value))) {
        place(L.latLng(parseFloat(lat.value), parseFloat(lon.value)), 16);
      }
    }
    var locate = document.getElementById("locate"), status = document.getElementById("locate-status");
    if (locate && navigator.geolocation) {
      locate.hidden = false;
      locate.addEventListener("click", function () {
        status.textContent = form.dataset.locating;
        navigator.geolocation.getCurrentPosition(function (pos) {
          status.textContent = "";
          place({lat: pos.coords.latitude, lng: pos.coords.longitude}, 17);
        }, function () { status.textContent = form.dataset.locationFailed; }, {timeout: 15000});
      });
    }
    suggestions(document.getElementById("address_string"), document.getElementById("place-list"));
    photos(form, document.getElementById("media"), document.getElementById("preview"));
    form.addEventListener("submit", function () {
      var button = document.getElementById("submit");
      window.setTimeout(function () { button.disabled = true; button.textContent = form.dataset.sending; }, 0);
    });
  }

  function suggestions(input, list) {
    if (!input || !list || !window.fetch) { return; }
    var timer = null, last = "";
    input.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(function () {
        var q = input.value.trim();
        if (q.length < 2 || q === last) { return; }
        last = q;
        fetch("/places?q=" + encodeURIComponent(q)).then(function (r) { return r.ok ? r.json() : []; })
          .then(function (items) {
            list.textContent = "";
            items.forEach(function (item) {
              var option = document.createElement("option");
              option.value = item.label;
              list.appendChild(option);
            });
          }).catch(function () {});
      }, 200);
    });
  }

  /* Photos are redrawn on a canvas: smaller uploads on mobile data, and the copy carries no EXIF/GPS. */
  function resize(file) {
    if (!window.createImageBitmap || !/^image\//.test(file.type)) { return Promise.resolve(file); }
    return createImageBitmap(file, {imageOrientation: "from-image"}).then(function (bitmap) {
      var scale = Math.min(1, MAX_EDGE / Math.max(bitmap.width, bitmap.height));
      var canvas = document.createElement("canvas");
      canvas.width = Math.round(bitmap.width * scale);
      canvas.height = Math.round(bitmap.height * scale);
      canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
      return new Promise(function (done) {
        canvas.toBlob(function (blob) {
          var name = file.name.replace(/\.[^.]*$/, "") + ".jpg";
          done(blob ? new File([blob], name, {type: "image/jpeg"}) : file);
        }, "image/jpeg", 0.82);
      });
    }).catch(function () { return file; });
  }

  function photos(form, input, preview) {
    if (!input || !preview || !window.DataTransfer) { return; }
    var max = parseInt(form.dataset.maxPhotos, 10) || 5;
    input.addEventListener("change", function () {
      var chosen = Array.prototype.slice.call(input.files, 0, max);
      Promise.all(chosen.map(resize)).then(function (files) {
        var dt = new DataTransfer();
        preview.textContent = "";
        files.forEach(function (f, i) {
          dt.items.add(f);
          var img = document.createElement("img");
          img.src = URL.createObjectURL(f);
          img.alt = form.dataset.photoAlt + " " + (i + 1);
          preview.appendChild(img);
        });
        input.files = dt.files;
      });
    });
  }

  function publicMap(el) {
    if (!window.L) { return; }
    var items = document.querySelectorAll("#reports li[data-lat]");
    if (!items.length) { return; }
    el.hidden = false;
    var map = L.map(el).setView(center(el), parseInt(el.dataset.zoom, 10) || 12);
    tiles(map, el);
    var bounds = [];
    Array.prototype.forEach.call(items, function (li) {
      var ll = [parseFloat(li.dataset.lat), parseFloat(li.dataset.long)];
      var link = li.querySelector("a");
      var m = L.marker(ll, {alt: link.textContent}).addTo(map);
      m.on("click", function () { window.location.href = link.getAttribute("href"); });
      bounds.push(ll);
    });
    if (bounds.length > 1) { map.fitBounds(bounds, {maxZoom: 16, padding: [20, 20]}); }
  }

  var form = document.getElementById("report-form");
  if (form) { reportForm(form); }
  var pm = document.getElementById("public-map");
  if (pm) { publicMap(pm); }
}());
