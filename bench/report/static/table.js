(function(){
  var table=document.getElementById('cell-table'),body=table.tBodies[0],filter=document.getElementById('filter'),
      count=document.getElementById('shown');
  function update(){var terms=filter.value.toLowerCase().split(/\s+/).filter(Boolean),n=0;
    Array.prototype.forEach.call(body.rows,function(r){var t=r.textContent.toLowerCase();
      Array.prototype.forEach.call(r.querySelectorAll('[title]'),function(e){t+=' '+e.title.toLowerCase();});
      var show=terms.every(function(w){return t.indexOf(w)>=0});r.style.display=show?'':'none';if(show)n++;});
    count.textContent=n+' of '+body.rows.length+' cells shown';}
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th,i){th.addEventListener('click',function(){
    var asc=th.getAttribute('data-sort')!=='asc';
    Array.prototype.forEach.call(table.tHead.rows[0].cells,function(h){h.removeAttribute('data-sort')});
    th.setAttribute('data-sort',asc?'asc':'desc');
    var rows=Array.prototype.slice.call(body.rows);
    rows.sort(function(a,b){var x=a.cells[i].getAttribute('data-v'),y=b.cells[i].getAttribute('data-v');
      if(x===''||y===''){return x===y?0:(x===''?1:-1);}
      var nx=Number(x),ny=Number(y),c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c;});
    rows.forEach(function(r){body.appendChild(r)});});});
  filter.addEventListener('input',update);update();
})();
